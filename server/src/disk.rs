//! The data dir's file system: how much room is left. Used by the quota check so that a
//! nearly full disk raises the NOSPACE alarm before a log append could fail. It must
//! never write anything.

use std::path::Path;

/// Bytes an unprivileged process may still write on the file system holding `path`
/// (statvfs), or None if that cannot be known.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}
