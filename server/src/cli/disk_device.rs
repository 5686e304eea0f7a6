//! Which device holds a directory, for `raftkv check-disk`: an SD card, a USB stick, an
//! NVMe or SATA drive, a spinning disk. Read from Linux's sysfs (the block device's
//! `removable` and `queue/rotational` flags, its model, and the bus it hangs from).
//!
//! Owns only that reading; it never writes, and where sysfs says nothing (another
//! operating system, a file system with no block device) it says so rather than guess.

use std::path::{Path, PathBuf};

/// Where Linux lists block devices by number.
const SYS_DEV_BLOCK: &str = "/sys/dev/block";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskKind {
    SdCard,
    /// Soldered-on flash on the MMC bus (some boards' eMMC).
    Emmc,
    /// Removable and on USB: a stick, or a card in a USB reader.
    UsbStick,
    /// On USB but not removable: a USB-attached drive, often an SSD in an enclosure.
    UsbDrive,
    Nvme,
    Rotational,
    /// A virtual machine's disk (virtio, Xen): its speed is the host's.
    Virtual,
    /// Anything else that is not rotational: a SATA or SAS SSD.
    Ssd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDevice {
    /// The whole disk's name: `mmcblk0`, `sda`, `nvme0n1`.
    pub name: String,
    pub kind: DiskKind,
    pub model: Option<String>,
}

impl DiskDevice {
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            DiskKind::SdCard => "SD card",
            DiskKind::Emmc => "eMMC",
            DiskKind::UsbStick => "USB stick or card reader (removable, on USB)",
            DiskKind::UsbDrive => "USB-attached drive",
            DiskKind::Nvme => "NVMe drive",
            DiskKind::Rotational => "spinning disk",
            DiskKind::Virtual => "virtual machine disk",
            DiskKind::Ssd => "solid-state drive",
        };
        match &self.model {
            Some(model) => format!("{} ({kind}, model {model})", self.name),
            None => format!("{} ({kind})", self.name),
        }
    }

    /// What to say about this device as the home of a Raft log, if anything.
    pub fn warning(&self) -> Option<String> {
        let why = match self.kind {
            DiskKind::SdCard | DiskKind::UsbStick => {
                "SD cards and USB sticks stall writes for tens to hundreds of ms while they \
                 erase, and wear out under a Raft log's constant small writes"
            }
            DiskKind::Rotational => {
                "a spinning disk needs a seek for every fdatasync (several ms each)"
            }
            _ => return None,
        };
        Some(format!(
            "WARNING: the data dir is on {}: {why}. etcd's hardware guidance asks for an SSD \
             for the log; use an NVMe or SATA SSD (on a Raspberry Pi 5, an NVMe drive on its \
             PCIe connector).\n",
            self.describe()
        ))
    }
}

/// The device holding `dir`, or None when sysfs does not say (not Linux, or a file
/// system without a block device: tmpfs, overlay, FUSE, NFS).
pub fn device_of(dir: &Path) -> Option<DiskDevice> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = split_dev(dev);
    if major == 0 {
        return None;
    }
    let node =
        std::fs::canonicalize(Path::new(SYS_DEV_BLOCK).join(format!("{major}:{minor}"))).ok()?;
    Some(describe(&whole_disk(&node)))
}

/// Linux's encoding of a device number (glibc's `major` and `minor`).
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0x0000_0fff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0x0000_00ff) | ((dev >> 12) & 0xffff_ff00);
    (major, minor)
}

/// A partition's sysfs directory sits inside its disk's.
fn whole_disk(node: &Path) -> PathBuf {
    if node.join("partition").exists() {
        if let Some(parent) = node.parent() {
            return parent.to_path_buf();
        }
    }
    node.to_path_buf()
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Classifies the disk whose sysfs directory (resolved, so that its path shows the
/// bus) is `disk`.
pub fn describe(disk: &Path) -> DiskDevice {
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let flag = |rel: &str| read_trimmed(&disk.join(rel)).is_some_and(|v| v == "1");
    let on_usb = disk.components().any(|c| {
        let c = c.as_os_str().to_string_lossy();
        c.starts_with("usb") || c.contains("-usb")
    });
    let mmc_type = read_trimmed(&disk.join("device/type"));
    let kind = if name.starts_with("mmcblk") {
        if mmc_type.as_deref() == Some("MMC") {
            DiskKind::Emmc
        } else {
            DiskKind::SdCard
        }
    } else if on_usb {
        if flag("removable") {
            DiskKind::UsbStick
        } else {
            DiskKind::UsbDrive
        }
    } else if name.starts_with("nvme") {
        DiskKind::Nvme
    } else if name.starts_with("vd") || name.starts_with("xvd") {
        // Before the rotational flag: a virtual disk's flag says nothing of the host's.
        DiskKind::Virtual
    } else if flag("queue/rotational") {
        DiskKind::Rotational
    } else {
        DiskKind::Ssd
    };
    let model = read_trimmed(&disk.join("device/model"))
        .or_else(|| read_trimmed(&disk.join("device/name")));
    DiskDevice { name, kind, model }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs disk directory at `path` (under a temp dir) with these files.
    fn disk(root: &Path, path: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(path);
        for (rel, content) in files {
            let file = dir.join(rel);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
            std::fs::write(file, format!("{content}\n")).expect("write");
        }
        dir
    }

    #[test]
    fn a_pis_sd_card_and_usb_stick_are_warned_about_and_its_nvme_is_not() {
        let root = tempfile::tempdir().expect("temp dir");
        let sd = disk(
            root.path(),
            "devices/platform/emmc2bus/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0",
            &[
                ("device/type", "SD"),
                ("device/name", "SC32G"),
                ("removable", "0"),
            ],
        );
        let sd = describe(&sd);
        assert_eq!(sd.kind, DiskKind::SdCard);
        assert_eq!(sd.describe(), "mmcblk0 (SD card, model SC32G)");
        assert!(sd
            .warning()
            .expect("warned")
            .contains("on mmcblk0 (SD card"));

        let stick = disk(
            root.path(),
            "devices/platform/axi/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda",
            &[
                ("removable", "1"),
                ("queue/rotational", "1"),
                ("device/model", "Cruzer Blade"),
            ],
        );
        let stick = describe(&stick);
        assert_eq!(stick.kind, DiskKind::UsbStick);
        assert!(stick.warning().is_some());

        let nvme = disk(
            root.path(),
            "devices/platform/axi/pcie/0000:01:00.0/nvme/nvme0/nvme0n1",
            &[
                ("removable", "0"),
                ("queue/rotational", "0"),
                ("device/model", "WD Blue SN580"),
            ],
        );
        let nvme = describe(&nvme);
        assert_eq!(nvme.kind, DiskKind::Nvme);
        assert_eq!(nvme.warning(), None);
    }

    #[test]
    fn usb_ssds_spinning_disks_and_virtual_disks() {
        let root = tempfile::tempdir().expect("temp dir");
        let usb_ssd = disk(
            root.path(),
            "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host1/block/sdb",
            &[("removable", "0"), ("queue/rotational", "0")],
        );
        assert_eq!(describe(&usb_ssd).kind, DiskKind::UsbDrive);
        let hdd = disk(
            root.path(),
            "devices/pci0000:00/0000:00:17.0/ata1/host0/block/sda",
            &[("queue/rotational", "1")],
        );
        let hdd = describe(&hdd);
        assert_eq!(hdd.kind, DiskKind::Rotational);
        assert!(hdd.warning().expect("warned").contains("spinning disk"));
        let vda = disk(
            root.path(),
            "devices/pci0000:00/virtio1/block/vda",
            &[("queue/rotational", "0")],
        );
        assert_eq!(describe(&vda).kind, DiskKind::Virtual);
    }

    #[test]
    fn device_numbers_split_as_glibc_does() {
        assert_eq!(split_dev(0xfe00), (254, 0));
        assert_eq!(split_dev((259 << 8) | 3), (259, 3));
    }
}
