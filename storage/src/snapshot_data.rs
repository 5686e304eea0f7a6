//! The bytes of a Raft snapshot as openraft carries them: a file, which may still be
//! being written by an export (state_machine.rs exports on demand).
//!
//! Reads and seeks of a file under export wait until the export has ended, and fail
//! if it failed, so that no reader ever sees part of a snapshot as the whole of it.
//! This module owns that waiting; it never writes a snapshot itself.

use std::future::Future;
use std::io::SeekFrom;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Resolves when an export has ended: `Err` carries why it failed.
pub type ExportDone = Shared<BoxFuture<'static, Result<(), String>>>;

/// The end of an export, from the channel its thread reports on.
pub fn export_done(rx: tokio::sync::oneshot::Receiver<Result<(), String>>) -> ExportDone {
    rx.map(|ended| ended.unwrap_or_else(|_| Err("the export stopped without a result".into())))
        .boxed()
        .shared()
}

/// openraft's `SnapshotData`.
pub struct SnapshotData {
    /// None: a snapshot point recorded without its bytes (`build_snapshot`); reads
    /// see an empty file.
    file: Option<tokio::fs::File>,
    /// Some while the file may still be being written.
    export: Option<ExportDone>,
    /// A seek asked for while the export ran, done once it ended.
    seek_after_export: Option<SeekFrom>,
}

impl SnapshotData {
    /// A whole snapshot file.
    pub fn file(file: tokio::fs::File) -> SnapshotData {
        SnapshotData {
            file: Some(file),
            export: None,
            seek_after_export: None,
        }
    }

    /// A file an export is still writing; `done` says when it ended.
    pub fn exporting(file: tokio::fs::File, done: ExportDone) -> SnapshotData {
        SnapshotData {
            file: Some(file),
            export: Some(done),
            seek_after_export: None,
        }
    }

    /// An export that could not start: every read fails with `reason`.
    pub fn failed(reason: String) -> SnapshotData {
        SnapshotData {
            file: None,
            export: Some(futures::future::ready(Err(reason)).boxed().shared()),
            seek_after_export: None,
        }
    }

    /// Stands in for the bytes of a snapshot point that is exported only when a
    /// follower needs it.
    pub fn point_only() -> SnapshotData {
        SnapshotData {
            file: None,
            export: None,
            seek_after_export: None,
        }
    }

    /// Waits for the export writing this file, if any, to end.
    pub async fn ready(&mut self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_export(cx)).await
    }

    /// The whole file, once its export has ended.
    pub async fn into_std(mut self) -> std::io::Result<std::fs::File> {
        self.ready().await?;
        match self.file.take() {
            Some(file) => Ok(file.into_std().await),
            None => Err(std::io::Error::other(
                "a snapshot point without its bytes cannot be installed",
            )),
        }
    }

    fn poll_export(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(done) = self.export.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match Pin::new(done).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(reason)) => Poll::Ready(Err(std::io::Error::other(format!(
                "snapshot export failed: {reason}"
            )))),
            Poll::Ready(Ok(())) => {
                self.export = None;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = std::task::ready!(this.poll_export(cx)) {
            return Poll::Ready(Err(e));
        }
        match this.file.as_mut() {
            Some(file) => Pin::new(file).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().file.as_mut() {
            Some(file) => Pin::new(file).poll_write(cx, buf),
            None => Poll::Ready(Err(std::io::Error::other(
                "a snapshot point without its bytes cannot be written",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(file) => Pin::new(file).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(file) => Pin::new(file).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        let this = self.get_mut();
        match this.file.as_mut() {
            // The file's length is not known before its export ends.
            Some(_) if this.export.is_some() => {
                this.seek_after_export = Some(position);
                Ok(())
            }
            Some(file) => Pin::new(file).start_seek(position),
            None => Ok(()),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        let this = self.get_mut();
        if let Err(e) = std::task::ready!(this.poll_export(cx)) {
            return Poll::Ready(Err(e));
        }
        let Some(file) = this.file.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if let Some(position) = this.seek_after_export.take() {
            Pin::new(&mut *file).start_seek(position)?;
        }
        Pin::new(file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{SeekFrom, Write};

    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    use super::{export_done, SnapshotData};

    #[tokio::test]
    async fn a_reader_of_a_file_under_export_sees_it_whole_once_the_export_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("export");
        let mut writer = std::fs::File::create(&path).expect("create");
        writer.write_all(b"first half, ").expect("write");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let file = tokio::fs::File::open(&path).await.expect("open");
        let mut data = SnapshotData::exporting(file, export_done(rx));

        let reader = tokio::spawn(async move {
            let end = data.seek(SeekFrom::End(0)).await.expect("seek");
            data.seek(SeekFrom::Start(0)).await.expect("seek");
            let mut all = String::new();
            data.read_to_string(&mut all).await.expect("read");
            (end, all)
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "the reader went ahead of the export");
        writer.write_all(b"second half").expect("write");
        tx.send(Ok(())).expect("send");
        let (end, all) = reader.await.expect("reader");
        assert_eq!(all, "first half, second half");
        assert_eq!(end, all.len() as u64);
    }

    #[tokio::test]
    async fn a_failed_export_fails_its_readers_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("export");
        std::fs::write(&path, b"part").expect("write");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let file = tokio::fs::File::open(&path).await.expect("open");
        let mut data = SnapshotData::exporting(file, export_done(rx));
        tx.send(Err("No space left on device".into()))
            .expect("send");
        let mut buf = Vec::new();
        let err = data.read_to_end(&mut buf).await.expect_err("read fails");
        assert!(err.to_string().contains("No space left"), "{err}");
        assert!(buf.is_empty(), "read part of a failed export");

        let mut failed = SnapshotData::failed("cannot create the file".into());
        let err = failed.ready().await.expect_err("fails");
        assert!(err.to_string().contains("cannot create"), "{err}");
    }
}
