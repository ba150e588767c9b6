//! A minimal reader for `.tar.gz` archives (ustar, with GNU long names and
//! PAX `path` records): enough to unpack `aclImdb_v1.tar.gz`, and strict about
//! paths so an archive cannot write outside its target folder.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

const BLOCK: usize = 512;

fn invalid(path: &Path, msg: String) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        msg,
    }
}

fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn c_string(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// A relative path with no `..`, root or prefix components.
fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Unpacks the regular files and folders of gzip-compressed tar `archive`
/// into `dest` (created if missing). Links and special files are skipped.
///
/// # Errors
/// [`Error::InvalidFile`] for a corrupt archive or an entry whose path would
/// leave `dest`; [`Error::Io`] for read or write failures.
pub fn unpack_tar_gz(archive: &Path, dest: &Path) -> Result<usize> {
    let file = std::fs::File::open(archive).map_err(|source| Error::Io {
        path: archive.to_path_buf(),
        source,
    })?;
    unpack_tar(
        flate2::read::GzDecoder::new(std::io::BufReader::new(file)),
        archive,
        dest,
    )
}

/// Unpacks an uncompressed tar stream; `origin` names it in errors. Returns
/// the number of files written.
pub fn unpack_tar<R: Read>(mut reader: R, origin: &Path, dest: &Path) -> Result<usize> {
    let read_err = |e: std::io::Error| invalid(origin, format!("cannot read the archive: {e}"));
    std::fs::create_dir_all(dest).map_err(|source| Error::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut header = [0u8; BLOCK];
    let mut long_name: Option<String> = None;
    let mut files = 0;
    loop {
        if let Err(e) = reader.read_exact(&mut header) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                // Archives without the two zero blocks still end here.
                return Ok(files);
            }
            return Err(read_err(e));
        }
        if header.iter().all(|&b| b == 0) {
            return Ok(files);
        }
        let stored: u64 = octal(&header[148..156]).ok_or_else(|| {
            invalid(
                origin,
                "bad header checksum field: not a tar archive or corrupt".into(),
            )
        })?;
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    u64::from(b' ')
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != stored {
            return Err(invalid(origin, format!("header checksum {sum} differs from stored {stored}: not a tar archive or corrupt")));
        }
        let size =
            octal(&header[124..136]).ok_or_else(|| invalid(origin, "bad size field".into()))?;
        let kind = header[156];
        let mut name = String::from_utf8_lossy(c_string(&header[0..100])).into_owned();
        if &header[257..262] == b"ustar" {
            let prefix = c_string(&header[345..500]);
            if !prefix.is_empty() {
                name = format!("{}/{name}", String::from_utf8_lossy(prefix));
            }
        }
        if let Some(long) = long_name.take() {
            name = long;
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        match kind {
            b'L' | b'x' => {
                if size > 1 << 20 {
                    return Err(invalid(origin, format!("metadata entry of {size} bytes")));
                }
                let mut data = vec![0u8; padded as usize];
                reader.read_exact(&mut data).map_err(read_err)?;
                data.truncate(size as usize);
                if kind == b'L' {
                    long_name = Some(String::from_utf8_lossy(c_string(&data)).into_owned());
                } else {
                    // PAX records: "LEN key=value\n".
                    for record in String::from_utf8_lossy(&data).split('\n') {
                        if let Some((_, kv)) = record.split_once(' ') {
                            if let Some(path) = kv.strip_prefix("path=") {
                                long_name = Some(path.to_string());
                            }
                        }
                    }
                }
            }
            b'0' | b'\0' | b'5' => {
                let relative = safe_relative(&name).ok_or_else(|| {
                    invalid(
                        origin,
                        format!("entry {name:?} would be written outside the target folder"),
                    )
                })?;
                let target = dest.join(relative);
                let io = |path: &Path| {
                    let path = path.to_path_buf();
                    move |source| Error::Io { path, source }
                };
                if kind == b'5' {
                    std::fs::create_dir_all(&target).map_err(io(&target))?;
                    std::io::copy(&mut (&mut reader).take(padded), &mut std::io::sink())
                        .map_err(read_err)?;
                } else {
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(io(parent))?;
                    }
                    let mut out = std::io::BufWriter::new(
                        std::fs::File::create(&target).map_err(io(&target))?,
                    );
                    let copied =
                        std::io::copy(&mut (&mut reader).take(size), &mut out).map_err(read_err)?;
                    if copied != size {
                        return Err(invalid(origin, format!("entry {name:?} is truncated")));
                    }
                    out.flush().map_err(io(&target))?;
                    std::io::copy(&mut (&mut reader).take(padded - size), &mut std::io::sink())
                        .map_err(read_err)?;
                    files += 1;
                }
            }
            _ => {
                std::io::copy(&mut (&mut reader).take(padded), &mut std::io::sink())
                    .map_err(read_err)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: usize, kind: u8) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn entry(out: &mut Vec<u8>, name: &str, data: &[u8], kind: u8) {
        out.extend_from_slice(&header(name, data.len(), kind));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    #[test]
    fn unpacks_files_dirs_and_long_names() {
        let long = format!("aclImdb/train/pos/{}_9.txt", "1".repeat(120));
        let mut tar = Vec::new();
        entry(&mut tar, "aclImdb/", b"", b'5');
        entry(&mut tar, "aclImdb/train/neg/0_3.txt", b"Bad film.", b'0');
        entry(
            &mut tar,
            "././@LongLink",
            format!("{long}\0").as_bytes(),
            b'L',
        );
        entry(&mut tar, "ignored-short-name", b"Great!", b'0');
        tar.extend_from_slice(&[0u8; 2 * BLOCK]);
        let dir = tempfile::tempdir().unwrap();
        let n = unpack_tar(&tar[..], Path::new("a.tar"), dir.path()).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("aclImdb/train/neg/0_3.txt")).unwrap(),
            "Bad film."
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&long)).unwrap(),
            "Great!"
        );
    }

    #[test]
    fn rejects_escaping_paths_and_garbage() {
        let mut tar = Vec::new();
        entry(&mut tar, "../evil.txt", b"x", b'0');
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_tar(&tar[..], Path::new("a.tar"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the target folder"), "{err}");
        let err = unpack_tar(&[7u8; BLOCK][..], Path::new("a.tar"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a tar archive"), "{err}");
    }
}
