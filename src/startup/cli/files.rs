//! Files for the CLI: an input is a file or stdin (`-`), an output is stdout
//! (`-`) or a file written under a temporary name in its own folder and
//! renamed only once complete, so a failed or interrupted command never
//! leaves a partial output file behind (an existing one stays as it was).
//! [`pump`] streams one into the other in fixed chunks: memory stays constant.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tempfile::NamedTempFile;

use super::CliError;
use super::progress::Progress;

/// Bytes read at a time.
pub const CHUNK: usize = 1 << 20;

/// True when `path` means stdin or stdout.
pub fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// A readable source and its length when known (a regular file).
pub struct Input {
    name: String,
    len: Option<u64>,
    reader: Box<dyn Read + Send>,
}

impl Input {
    pub fn open(path: &Path) -> Result<Self, CliError> {
        if is_dash(path) {
            return Ok(Self {
                name: "stdin".to_owned(),
                len: None,
                reader: Box::new(io::stdin()),
            });
        }
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| CliError::io(format!("cannot open {name}"), e))?;
        let meta = file
            .metadata()
            .map_err(|e| CliError::io(format!("cannot read {name}"), e))?;
        if meta.is_dir() {
            return Err(CliError::Usage(format!("{name} is a folder, not a file")));
        }
        Ok(Self {
            name,
            len: meta.is_file().then_some(meta.len()),
            reader: Box::new(file),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The length in bytes, for a regular file.
    pub fn known_len(&self) -> Option<u64> {
        self.len
    }

    /// Reads at most `buf.len()` bytes; 0 only at the end.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, CliError> {
        loop {
            match self.reader.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CliError::io(format!("cannot read {}", self.name), e)),
            }
        }
    }

    /// Reads until `buf` is full or the input ends; answers how many bytes were read.
    pub fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, CliError> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read_chunk(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }
}

enum Sink {
    Stdout(io::Stdout),
    Temp {
        file: NamedTempFile,
        destination: PathBuf,
    },
}

/// A destination that only appears, whole, on [`Output::commit`].
pub struct Output {
    name: String,
    sink: Sink,
}

impl Output {
    /// Stdout for `-` (refused when it is a terminal: the data is binary),
    /// else `OUT.tmp-XXXXXX` beside `path`, readable by its owner only.
    pub fn create(path: &Path) -> Result<Self, CliError> {
        if is_dash(path) {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                return Err(CliError::Usage(
                    "refusing to write binary data to a terminal: redirect stdout or name a file"
                        .to_owned(),
                ));
            }
            return Ok(Self {
                name: "stdout".to_owned(),
                sink: Sink::Stdout(stdout),
            });
        }
        let name = path.display().to_string();
        let Some(file_name) = path.file_name() else {
            return Err(CliError::Usage(format!("{name} does not name a file")));
        };
        if path.is_dir() {
            return Err(CliError::Usage(format!("{name} is a folder, not a file")));
        }
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let prefix = format!("{}.tmp-", file_name.to_string_lossy());
        let file = tempfile::Builder::new()
            .prefix(&prefix)
            .rand_bytes(6)
            .tempfile_in(folder)
            .map_err(|e| {
                CliError::io(format!("cannot create a file in {}", folder.display()), e)
            })?;
        Ok(Self {
            name,
            sink: Sink::Temp {
                file,
                destination: path.to_path_buf(),
            },
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        let result = match &mut self.sink {
            Sink::Stdout(stdout) => stdout.write_all(bytes),
            Sink::Temp { file, .. } => file.write_all(bytes),
        };
        result.map_err(|e| CliError::io(format!("cannot write {}", self.name), e))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(self) -> Result<(), CliError> {
        let name = self.name;
        match self.sink {
            Sink::Stdout(mut stdout) => stdout
                .flush()
                .map_err(|e| CliError::io(format!("cannot write {name}"), e)),
            Sink::Temp { file, destination } => {
                file.as_file()
                    .sync_all()
                    .map_err(|e| CliError::io(format!("cannot write {name}"), e))?;
                file.persist(&destination)
                    .map_err(|e| CliError::io(format!("cannot create {name}"), e.error))?;
                Ok(())
            }
        }
    }
}

/// Checks that a command's paths do not collide: at most one stdin, one
/// stdout, and no output named twice.
pub fn check_distinct(inputs: &[&Path], outputs: &[&Path]) -> Result<(), CliError> {
    if inputs.iter().filter(|p| is_dash(p)).count() > 1 {
        return Err(CliError::Usage(
            "only one input can be stdin (-)".to_owned(),
        ));
    }
    if outputs.iter().filter(|p| is_dash(p)).count() > 1 {
        return Err(CliError::Usage(
            "only one output can be stdout (-)".to_owned(),
        ));
    }
    for (i, a) in outputs.iter().enumerate() {
        if !is_dash(a) && outputs[i + 1..].contains(a) {
            return Err(CliError::Usage(format!(
                "{} is named as two outputs",
                a.display()
            )));
        }
    }
    Ok(())
}

/// Streams `input` through `transform` into `output` in [`CHUNK`]s until
/// the input ends, counting progress and stopping when `cancel` is set.
pub fn pump(
    input: &mut Input,
    output: &mut Output,
    progress: &mut Progress,
    cancel: &AtomicBool,
    mut transform: impl FnMut(&[u8], &mut Vec<u8>),
) -> Result<u64, CliError> {
    let mut buf = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK + 32);
    let mut total = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(CliError::Interrupted);
        }
        let n = input.read_chunk(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        out.clear();
        transform(&buf[..n], &mut out);
        output.write_all(&out)?;
        total += n as u64;
        progress.advance(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_stdins_two_stdouts_or_one_output_twice_are_refused() {
        let dash = Path::new("-");
        let a = Path::new("a");
        let b = Path::new("b");
        assert!(check_distinct(&[dash, dash], &[a]).is_err());
        assert!(check_distinct(&[a], &[dash, dash]).is_err());
        assert!(check_distinct(&[a], &[b, b]).is_err());
        assert!(check_distinct(&[dash, a], &[dash, b]).is_ok());
    }

    #[test]
    fn an_output_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut output = Output::create(&path).unwrap();
        output.write_all(b"abc").unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(names[0].starts_with("out.bin.tmp-"), "{names:?}");
        assert!(!path.exists());
        output.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_dropped_output_leaves_nothing_and_keeps_an_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        let mut output = Output::create(&path).unwrap();
        output.write_all(b"partial").unwrap();
        drop(output);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
