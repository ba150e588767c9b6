//! Unpacking `.tar.gz` archives (`aclImdb_v1.tar.gz`) with the `tar` crate,
//! strict about paths: an entry that would land outside the target folder (an
//! absolute path, `..`) is an error naming the archive, not a skipped file. Only
//! files and folders are unpacked; links and devices are passed over.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

fn invalid(path: &Path, msg: String) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        msg,
    }
}

/// A relative path with no `..`, root or prefix components.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Unpacks a `.tar.gz` file into `dest`; returns the number of files written.
///
/// # Errors
/// [`Error::Io`] naming the archive or a file written; [`Error::InvalidFile`]
/// naming the archive for a corrupt one or an entry outside `dest`.
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
///
/// # Errors
/// As [`unpack_tar_gz`].
pub fn unpack_tar<R: Read>(reader: R, origin: &Path, dest: &Path) -> Result<usize> {
    let corrupt = |e: std::io::Error| {
        invalid(
            origin,
            format!("cannot read the archive (not a tar archive or corrupt): {e}"),
        )
    };
    std::fs::create_dir_all(dest).map_err(|source| Error::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut archive = tar::Archive::new(reader);
    let mut files = 0;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry.path().map_err(corrupt)?.into_owned();
        let relative = safe_relative(&name).ok_or_else(|| {
            invalid(
                origin,
                format!(
                    "entry {:?} would be written outside the target folder",
                    name.display()
                ),
            )
        })?;
        let target = dest.join(&relative);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&target).map_err(io(&target))?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                let mut out = std::fs::File::create(&target).map_err(io(&target))?;
                std::io::copy(&mut entry, &mut out).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        invalid(origin, format!("entry {:?} is truncated", name.display()))
                    } else {
                        io(&target)(e)
                    }
                })?;
                files += 1;
            }
            _ => {}
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 512;

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
