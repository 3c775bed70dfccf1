//! Guest stdout and stderr, one line at a time: to the console (the
//! provider's stdout and stderr), prefixed with the app and component they
//! came from (unless silenced, as
//! Spin's `--follow` / `-q` do), and to per-component files in the log
//! directory (`<component>_stdout.txt`, `<component>_stderr.txt`, as Spin
//! names them).

use bytes::Bytes;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Where one component's output goes; shared by all its instances.
pub struct ComponentOutput {
    prefix: String,
    console: bool,
    stdout: Option<Mutex<File>>,
    stderr: Option<Mutex<File>>,
}

impl ComponentOutput {
    /// Output to the log only.
    pub fn console(app: &str, component: &str) -> Arc<ComponentOutput> {
        Arc::new(ComponentOutput {
            prefix: format!("{app}/{component}"),
            console: true,
            stdout: None,
            stderr: None,
        })
    }

    /// Output to the log when `console`, and appended to files in `log_dir`
    /// when there is one (emptied first when `truncate`).
    pub fn new(
        app: &str,
        component: &str,
        console: bool,
        log_dir: Option<&Path>,
        truncate: bool,
    ) -> std::io::Result<Arc<ComponentOutput>> {
        let open = |stream: &str| -> std::io::Result<Option<Mutex<File>>> {
            let Some(dir) = log_dir else { return Ok(None) };
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{component}_{stream}.txt"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(!truncate)
                .write(true)
                .truncate(truncate)
                .open(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok(Some(Mutex::new(file)))
        };
        Ok(Arc::new(ComponentOutput {
            prefix: format!("{app}/{component}"),
            console,
            stdout: open("stdout")?,
            stderr: open("stderr")?,
        }))
    }

    /// The file that keeps `stream`'s lines, if there is a log directory.
    fn file(&self, stream: &str) -> Option<&Mutex<File>> {
        if stream == "stderr" {
            self.stderr.as_ref()
        } else {
            self.stdout.as_ref()
        }
    }

    /// Whether anything receives `stream`'s lines (the console, or a file).
    fn keeps(&self, stream: &str) -> bool {
        self.console || self.file(stream).is_some()
    }
}

/// A guest output stream (stdout or stderr) of one instance.
#[derive(Clone)]
pub struct LogStream {
    output: Arc<ComponentOutput>,
    stream: &'static str,
}

impl LogStream {
    /// The instance's `stream` ("stdout" or "stderr").
    pub fn new(output: &Arc<ComponentOutput>, stream: &'static str) -> Self {
        LogStream {
            output: output.clone(),
            stream,
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            target: self.clone(),
            pending: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            target: self.clone(),
            pending: Vec::new(),
        })
    }
}

/// Buffers a partial line until its newline arrives (or the instance ends).
struct LineWriter {
    target: LogStream,
    pending: Vec<u8>,
}

impl LineWriter {
    fn write_bytes(&mut self, bytes: &[u8]) {
        if !self.target.output.keeps(self.target.stream) {
            // Silenced, with no log directory: nothing to assemble.
            return;
        }
        self.pending.extend_from_slice(bytes);
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        // Bound the buffer: a guest that never writes a newline still gets logged.
        if self.pending.len() > 16 * 1024 {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let out = &self.target.output;
        if let Some(file) = out.file(self.target.stream) {
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.write_all(line).and_then(|()| file.write_all(b"\n")) {
                tracing::warn!("[{}] cannot write to the log file: {e}", out.prefix);
            }
        }
        if out.console {
            // Straight to the console, as Spin prints its components'
            // output, whatever the log filter: the guest's stdout to ours,
            // its stderr to ours.
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let mut text = Vec::with_capacity(out.prefix.len() + line.len() + 4);
            text.push(b'[');
            text.extend_from_slice(out.prefix.as_bytes());
            text.extend_from_slice(b"] ");
            text.extend_from_slice(line);
            text.push(b'\n');
            // A console that is gone (a closed pipe) loses the copy only.
            let _ = if self.target.stream == "stderr" {
                std::io::stderr().lock().write_all(&text)
            } else {
                std::io::stdout().lock().write_all(&text)
            };
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
