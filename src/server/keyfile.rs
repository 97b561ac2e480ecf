//! The vendor key file: the two secrets of [`VendorKeys`] as text.
//!
//! ```text
//! # spime vendor keys: keep secret, back up offline
//! signing-seed <64 hex digits: the Ed25519 seed>
//! key-agreement <64 hex digits: the X25519 secret>
//! ```
//!
//! Lines starting with `#` and blank lines are ignored; each key appears
//! exactly once. [`init`] writes `vendor.keys` (mode 0600 on Unix) and
//! `vendor.pub` (the public keys devices are provisioned with) into a
//! directory and refuses to overwrite existing keys.
//!
//! ```
//! use spime::server::keyfile;
//! use spime::seal::VendorKeys;
//! let text = keyfile::format(&[1; 32], &[2; 32]);
//! let keys = keyfile::parse(&text)?;
//! assert_eq!(keys.public(), VendorKeys::from_secrets(&[1; 32], &[2; 32]).public());
//! # Ok::<(), keyfile::KeyFileError>(())
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::seal::VendorKeys;

/// The secret key file's name inside a data directory.
pub const SECRET_FILE: &str = "vendor.keys";
/// The public key file's name inside a data directory.
pub const PUBLIC_FILE: &str = "vendor.pub";

/// The key file could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A line is not `name hex`, names an unknown key, or repeats one.
    #[error("line {line}: {what}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A key is missing.
    #[error("missing `{0}`")]
    Missing(&'static str),
    /// Keys exist already; [`init`] never overwrites.
    #[error("{0} exists already; refusing to overwrite vendor keys")]
    Exists(PathBuf),
    /// The system's random source failed.
    #[error("random source: {0}")]
    Random(String),
}

/// The text of a key file for the given secrets.
pub fn format(signing_seed: &[u8; 32], key_agreement: &[u8; 32]) -> Zeroizing<String> {
    Zeroizing::new(alloc::format!(
        "# spime vendor keys: keep secret, back up offline\nsigning-seed {}\nkey-agreement {}\n",
        hex::encode(signing_seed),
        hex::encode(key_agreement)
    ))
}

/// Parses a key file's text.
///
/// # Errors
/// [`KeyFileError::Syntax`] or [`KeyFileError::Missing`].
pub fn parse(text: &str) -> Result<VendorKeys, KeyFileError> {
    let mut seed: Option<Zeroizing<[u8; 32]>> = None;
    let mut kx: Option<Zeroizing<[u8; 32]>> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |what| KeyFileError::Syntax { line: i + 1, what };
        let (name, value) = line.split_once(char::is_whitespace).ok_or(syntax("expected `name hex`"))?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(value.trim(), bytes.as_mut_slice()).map_err(|_| syntax("expected 64 hex digits"))?;
        let slot = match name {
            "signing-seed" => &mut seed,
            "key-agreement" => &mut kx,
            _ => return Err(syntax("unknown key name")),
        };
        if slot.replace(bytes).is_some() {
            return Err(syntax("key given twice"));
        }
    }
    let seed = seed.ok_or(KeyFileError::Missing("signing-seed"))?;
    let kx = kx.ok_or(KeyFileError::Missing("key-agreement"))?;
    Ok(VendorKeys::from_secrets(&seed, &kx))
}

/// Reads `dir/vendor.keys`.
///
/// # Errors
/// A [`KeyFileError`].
pub fn load(dir: &Path) -> Result<VendorKeys, KeyFileError> {
    let path = dir.join(SECRET_FILE);
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|source| KeyFileError::Io { path, source })?);
    parse(&text)
}

/// Creates `dir` if needed and writes fresh keys from the system's random
/// source to `dir/vendor.keys` (mode 0600) and their public halves to
/// `dir/vendor.pub`. Returns the keys.
///
/// # Errors
/// [`KeyFileError::Exists`] when `vendor.keys` is there already, or an I/O
/// or random-source failure.
pub fn init(dir: &Path) -> Result<VendorKeys, KeyFileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyFileError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(SECRET_FILE);
    let mut secrets = Zeroizing::new([0u8; 64]);
    getrandom::fill(secrets.as_mut_slice()).map_err(|e| KeyFileError::Random(e.to_string()))?;
    let (seed, kx) = secrets.split_at(32);
    let seed: [u8; 32] = seed.try_into().map_err(|_| KeyFileError::Random("short".into()))?;
    let kx: [u8; 32] = kx.try_into().map_err(|_| KeyFileError::Random("short".into()))?;
    let text = format(&seed, &kx);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists(path.clone()),
        _ => KeyFileError::Io { path: path.clone(), source: e },
    })?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io(&path))?;
    let keys = VendorKeys::from_secrets(&seed, &kx);
    let public = keys.public();
    let pub_path = dir.join(PUBLIC_FILE);
    let pub_text = alloc::format!(
        "# spime vendor public keys: provision these into devices\nsigning {}\nkey-agreement {}\n",
        hex::encode(public.signing.to_bytes()),
        hex::encode(public.key_agreement)
    );
    std::fs::write(&pub_path, pub_text).map_err(io(&pub_path))?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_malformed_file_is_refused_with_its_reason() {
        let ok = format(&[1; 32], &[2; 32]);
        assert!(parse(&ok).is_ok());
        assert!(matches!(parse("signing-seed 00\n"), Err(KeyFileError::Syntax { what: "expected 64 hex digits", .. })));
        assert!(matches!(parse("signing-seed\n"), Err(KeyFileError::Syntax { what: "expected `name hex`", .. })));
        assert!(matches!(parse(""), Err(KeyFileError::Missing("signing-seed"))));
        let twice = alloc::format!("{}signing-seed {}\n", &*ok, hex::encode([3; 32]));
        assert!(matches!(parse(&twice), Err(KeyFileError::Syntax { what: "key given twice", .. })));
        let unknown = alloc::format!("colour {}\n", hex::encode([3; 32]));
        assert!(matches!(parse(&unknown), Err(KeyFileError::Syntax { what: "unknown key name", .. })));
        let only_seed = alloc::format!("signing-seed {}\n", hex::encode([3; 32]));
        assert!(matches!(parse(&only_seed), Err(KeyFileError::Missing("key-agreement"))));
    }

    #[test]
    fn init_writes_keys_once_and_load_reads_them_back() {
        let dir = std::env::temp_dir().join(alloc::format!("spime-keyfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = init(&dir).unwrap();
        assert_eq!(load(&dir).unwrap().public(), made.public());
        assert!(matches!(init(&dir), Err(KeyFileError::Exists(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(SECRET_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(std::fs::read_to_string(dir.join(PUBLIC_FILE)).unwrap().contains("key-agreement"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
