//! The vendor key files of a data directory.
//!
//! - `vendor.keys` ([`SECRET_FILE`]): the secret keys, exactly the
//!   [`VENDOR_KEYS_LEN`] bytes of [`VendorKeys::to_bytes`] (the library's
//!   one documented format: magic `SPVK`, format byte 1, the Ed25519 seed,
//!   the X25519 secret). Written with mode 0600 on Unix; back it up offline.
//!   `xxd -p vendor.keys` shows it as hex, `xxd -r -p` turns the hex back.
//! - `vendor.pub` ([`PUBLIC_FILE`]): the public keys devices are provisioned
//!   with, as text; not secret.
//!
//! ```text
//! # spime vendor public keys: provision these into devices
//! signing <64 hex digits: the Ed25519 public key>
//! key-agreement <64 hex digits: the X25519 public key>
//! ```
//!
//! [`init`] writes both into a directory and refuses to overwrite existing
//! keys; [`load`] and [`load_file`] read the secret file back.
//!
//! The vendor certificate authority `VCA` (SPEC.md §2, §5.4, §5.11), kept
//! offline, has files of its own:
//!
//! - `ca.key` ([`CA_SECRET_FILE`]): the secret key, [`CA_KEY_LEN`] bytes:
//!   magic `SPCA`, format byte 1, the 32-byte Ed25519 seed. Mode 0600.
//! - `ca.pub` ([`CA_PUBLIC_FILE`]): `VCA.pub` as text, for devices
//!   (`Device::with_key_authority`) and for the server (`authority`):
//!
//! ```text
//! # spime certificate authority public key (VCA.pub)
//! authority <64 hex digits: the Ed25519 public key>
//! ```
//!
//! A vendor key certificate file is exactly the canonical encoding of a
//! [`VendorKeyCertificate`] (SPEC.md §5.11, at most
//! [`VendorKeyCertificate::MAX_ENCODED_LEN`] bytes); it is not secret.
//! [`ca_init`], [`load_ca`], [`write_certificate`], [`load_certificate`]
//! and [`load_authority`] make and read them.
//!
//! ```
//! use spime::server::keyfile;
//! let dir = std::env::temp_dir().join(format!("spime-keyfile-ca-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let ca = keyfile::ca_init(&dir)?;
//! assert_eq!(keyfile::load_authority(&dir.join(keyfile::CA_PUBLIC_FILE))?, ca.verifying_key());
//! let keys = keyfile::init(&dir)?;
//! let cert = spime::message::VendorKeyCertificate::certify(&keys, 1, 0, u64::MAX, &keyfile::load_ca(&dir.join(keyfile::CA_SECRET_FILE))?)
//!     .expect("valid times");
//! keyfile::write_certificate(&dir.join("vendor.cert"), &cert)?;
//! assert_eq!(keyfile::load_certificate(&dir.join("vendor.cert"))?, cert);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), keyfile::KeyFileError>(())
//! ```
//!
//! ```
//! use spime::server::keyfile;
//! let dir = std::env::temp_dir().join(format!("spime-keyfile-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let made = keyfile::init(&dir)?;
//! assert_eq!(keyfile::load(&dir)?.public(), made.public());
//! assert_eq!(std::fs::read(dir.join(keyfile::SECRET_FILE)).unwrap().len(), spime::seal::keys::VENDOR_KEYS_LEN);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), keyfile::KeyFileError>(())
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::DecodeError;
use crate::message::VendorKeyCertificate;
use crate::seal::keys::VENDOR_KEYS_LEN;
use crate::seal::{VendorKeys, VendorPublicKeys};

/// The secret key file's name inside a data directory.
pub const SECRET_FILE: &str = "vendor.keys";
/// The public key file's name inside a data directory.
pub const PUBLIC_FILE: &str = "vendor.pub";

/// The certificate authority's secret key file's name inside its directory.
pub const CA_SECRET_FILE: &str = "ca.key";
/// The certificate authority's public key file's name inside its directory.
pub const CA_PUBLIC_FILE: &str = "ca.pub";
/// The length of `ca.key`: `SPCA`, format 1, the Ed25519 seed.
pub const CA_KEY_LEN: usize = 4 + 1 + 32;
/// The first bytes of `ca.key`.
const CA_MAGIC: &[u8; 5] = b"SPCA\x01";

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
    /// The file is not [`VendorKeys::to_bytes`].
    #[error(
        "{path}: not a spime vendor key file ({source}; expected the {VENDOR_KEYS_LEN}-byte format of VendorKeys::to_bytes, starting with \"SPVK\")"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with its bytes.
        source: DecodeError,
    },
    /// The file is not a certificate authority key file ([`CA_SECRET_FILE`]).
    #[error(
        "{0}: not a spime certificate authority key file (expected the {CA_KEY_LEN}-byte format starting with \"SPCA\", from `spime-vendor keys ca init`, or a vendor key file)"
    )]
    CaFormat(PathBuf),
    /// The file is not a vendor key certificate.
    #[error(
        "{path}: not a spime vendor key certificate ({source}; expected the encoding of a VendorKeyCertificate, from `spime-vendor keys certify`)"
    )]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with its bytes.
        source: DecodeError,
    },
    /// Neither 64 hex digits nor a file holding an `authority` line.
    #[error(
        "{0}: not a certificate authority public key (64 hex digits, or a ca.pub file with an `authority <hex>` line)"
    )]
    Authority(String),
    /// The file exists already; [`init`], [`ca_init`] and
    /// [`write_certificate`] never overwrite.
    #[error("{0} exists already; refusing to overwrite it")]
    Exists(PathBuf),
    /// The system's random source failed.
    #[error("random source: {0}")]
    Random(String),
}

/// The text of `vendor.pub` for `public`.
///
/// ```
/// use spime::seal::VendorKeys;
/// let text = spime::server::keyfile::public_text(&VendorKeys::from_secrets(&[1; 32], &[2; 32]).public());
/// assert!(text.lines().any(|l| l.starts_with("key-agreement ")));
/// ```
pub fn public_text(public: &VendorPublicKeys) -> String {
    alloc::format!(
        "# spime vendor public keys: provision these into devices\nsigning {}\nkey-agreement {}\n",
        hex::encode(public.signing.to_bytes()),
        hex::encode(public.key_agreement)
    )
}

/// Reads `dir/vendor.keys`.
///
/// # Errors
/// As [`load_file`].
pub fn load(dir: &Path) -> Result<VendorKeys, KeyFileError> {
    load_file(&dir.join(SECRET_FILE))
}

/// Reads a secret key file anywhere (a mounted secret, say). Reads at most
/// one byte more than [`VENDOR_KEYS_LEN`], so a wrong path costs nothing.
///
/// # Errors
/// [`KeyFileError::Io`] when it cannot be read, [`KeyFileError::Format`]
/// when its bytes are not [`VendorKeys::to_bytes`].
pub fn load_file(path: &Path) -> Result<VendorKeys, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(VENDOR_KEYS_LEN + 1));
    file.take(VENDOR_KEYS_LEN as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    VendorKeys::from_bytes(&bytes).map_err(|source| KeyFileError::Format { path: path.to_path_buf(), source })
}

/// Whether group or others may read or write the file at `path` (Unix; always
/// `false` elsewhere or when it cannot be inspected). The server warns.
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Creates `dir` if needed and writes fresh keys from the system's random
/// source to `dir/vendor.keys` (mode 0600 on Unix) and their public halves to
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
    let mut seed = Zeroizing::new([0u8; 32]);
    let mut kx = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice())
        .and_then(|()| getrandom::fill(kx.as_mut_slice()))
        .map_err(|e| KeyFileError::Random(e.to_string()))?;
    let keys = VendorKeys::from_secrets(&seed, &kx);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists(path.clone()),
        _ => KeyFileError::Io { path: path.clone(), source: e },
    })?;
    file.write_all(keys.to_bytes().as_slice()).and_then(|()| file.sync_all()).map_err(io(&path))?;
    let pub_path = dir.join(PUBLIC_FILE);
    std::fs::write(&pub_path, public_text(&keys.public())).map_err(io(&pub_path))?;
    Ok(keys)
}

/// Writes `bytes` to a new file `path` (never overwriting), with mode 0600
/// on Unix when `secret`.
fn create_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), KeyFileError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists(path.to_path_buf()),
        _ => KeyFileError::Io { path: path.to_path_buf(), source: e },
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyFileError::Io { path: path.to_path_buf(), source })
}

/// The text of `ca.pub` for the authority's public key.
///
/// ```
/// let ca = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
/// let text = spime::server::keyfile::ca_public_text(&ca.verifying_key());
/// assert!(text.contains(&format!("authority {}", hex::encode(ca.verifying_key().to_bytes()))));
/// ```
pub fn ca_public_text(authority: &VerifyingKey) -> String {
    alloc::format!(
        "# spime certificate authority public key (VCA.pub): provision it into devices\n\
         # (Device::with_key_authority) and give it to the server (authority = this file)\n\
         authority {}\n",
        hex::encode(authority.to_bytes())
    )
}

/// Creates `dir` if needed and writes a fresh certificate authority key
/// from the system's random source to `dir/ca.key` (mode 0600 on Unix) and
/// its public key to `dir/ca.pub`. Returns the key.
///
/// # Errors
/// [`KeyFileError::Exists`] when `ca.key` is there already, or an I/O or
/// random-source failure.
pub fn ca_init(dir: &Path) -> Result<SigningKey, KeyFileError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyFileError::Io { path: dir.to_path_buf(), source })?;
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice()).map_err(|e| KeyFileError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let mut bytes = Zeroizing::new(Vec::with_capacity(CA_KEY_LEN));
    bytes.extend_from_slice(CA_MAGIC);
    bytes.extend_from_slice(seed.as_slice());
    create_new(&dir.join(CA_SECRET_FILE), &bytes, true)?;
    let pub_path = dir.join(CA_PUBLIC_FILE);
    std::fs::write(&pub_path, ca_public_text(&key.verifying_key()))
        .map_err(|source| KeyFileError::Io { path: pub_path, source })?;
    Ok(key)
}

/// Reads a certificate authority key to sign with: a `ca.key` file, or a
/// vendor key file (`vendor.keys`, whose signing key `VS` is then the
/// authority, as SPEC.md §2 allows).
///
/// # Errors
/// [`KeyFileError::Io`], or [`KeyFileError::CaFormat`] for any other file.
pub fn load_ca(path: &Path) -> Result<SigningKey, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(VENDOR_KEYS_LEN + 1));
    file.take(VENDOR_KEYS_LEN as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() == CA_KEY_LEN && bytes.starts_with(CA_MAGIC) {
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(bytes.get(5..).unwrap_or_default());
        return Ok(SigningKey::from_bytes(&seed));
    }
    match VendorKeys::from_bytes(&bytes) {
        Ok(keys) => Ok(keys.signing().clone()),
        Err(_) => Err(KeyFileError::CaFormat(path.to_path_buf())),
    }
}

/// Reads the certificate authority's public key from `text`: 64 hex
/// digits, or the path of a file (`ca.pub`) with an `authority <hex>` line.
///
/// # Errors
/// [`KeyFileError::Authority`]; [`KeyFileError::Io`] for a file that
/// cannot be read.
pub fn load_authority(text: &Path) -> Result<VerifyingKey, KeyFileError> {
    let parse = |hex_text: &str| -> Option<VerifyingKey> {
        let bytes: [u8; 32] = hex::decode(hex_text.trim()).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok().filter(|k| !k.is_weak())
    };
    let given = text.to_string_lossy();
    if let Some(k) = text.to_str().filter(|t| t.len() == 64).and_then(parse) {
        return Ok(k);
    }
    let content =
        std::fs::read_to_string(text).map_err(|source| KeyFileError::Io { path: text.to_path_buf(), source })?;
    content
        .lines()
        .find_map(|l| l.trim().strip_prefix("authority "))
        .and_then(parse)
        .ok_or_else(|| KeyFileError::Authority(given.into_owned()))
}

/// Writes a vendor key certificate to a new file `path` (never overwrites).
///
/// # Errors
/// [`KeyFileError::Exists`], [`KeyFileError::Io`].
pub fn write_certificate(path: &Path, certificate: &VendorKeyCertificate) -> Result<(), KeyFileError> {
    let mut buf = [0u8; VendorKeyCertificate::MAX_ENCODED_LEN];
    let bytes = crate::codec::encode(certificate, &mut buf)
        .map_err(|source| KeyFileError::Certificate { path: path.to_path_buf(), source })?;
    create_new(path, bytes, false)
}

/// Reads a vendor key certificate file (canonical decoding, SPEC.md §5.1).
/// It is not verified here: the keyring checks it against the authority.
///
/// # Errors
/// [`KeyFileError::Io`], [`KeyFileError::Certificate`].
pub fn load_certificate(path: &Path) -> Result<VendorKeyCertificate, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::with_capacity(VendorKeyCertificate::MAX_ENCODED_LEN + 1);
    file.take(VendorKeyCertificate::MAX_ENCODED_LEN as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    crate::codec::decode(&bytes).map_err(|source| KeyFileError::Certificate { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(alloc::format!("spime-keyfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn init_writes_the_library_format_once_and_load_reads_it_back() {
        let dir = temp("init");
        let made = init(&dir).unwrap();
        let bytes = std::fs::read(dir.join(SECRET_FILE)).unwrap();
        assert_eq!(bytes.as_slice(), made.to_bytes().as_slice(), "vendor.keys is VendorKeys::to_bytes");
        assert_eq!(load(&dir).unwrap().public(), made.public());
        assert!(matches!(init(&dir), Err(KeyFileError::Exists(_))));
        assert_eq!(std::fs::read(dir.join(SECRET_FILE)).unwrap(), bytes, "not overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(SECRET_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            assert!(!readable_by_others(&dir.join(SECRET_FILE)));
            std::fs::set_permissions(dir.join(SECRET_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(readable_by_others(&dir.join(SECRET_FILE)));
        }
        let public = std::fs::read_to_string(dir.join(PUBLIC_FILE)).unwrap();
        assert_eq!(public, public_text(&made.public()));
        assert!(public.contains(&hex::encode(made.public().key_agreement)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_certificate_authority_and_certificate_files() {
        let dir = temp("ca");
        let ca = ca_init(&dir).unwrap();
        let bytes = std::fs::read(dir.join(CA_SECRET_FILE)).unwrap();
        assert_eq!(bytes.len(), CA_KEY_LEN);
        assert_eq!(bytes.get(..5), Some(&CA_MAGIC[..]));
        assert_eq!(bytes.get(5..), Some(&ca.to_bytes()[..]), "the seed follows the magic");
        assert_eq!(load_ca(&dir.join(CA_SECRET_FILE)).unwrap().verifying_key(), ca.verifying_key());
        assert!(matches!(ca_init(&dir), Err(KeyFileError::Exists(_))));
        #[cfg(unix)]
        assert!(!readable_by_others(&dir.join(CA_SECRET_FILE)));
        // VCA.pub from ca.pub, or from its hex.
        assert_eq!(load_authority(&dir.join(CA_PUBLIC_FILE)).unwrap(), ca.verifying_key());
        let hex_key = hex::encode(ca.verifying_key().to_bytes());
        assert_eq!(load_authority(Path::new(&hex_key)).unwrap(), ca.verifying_key());
        std::fs::write(dir.join("bad.pub"), "authority 00\n").unwrap();
        assert!(matches!(load_authority(&dir.join("bad.pub")), Err(KeyFileError::Authority(_))));
        assert!(matches!(load_authority(&dir.join("absent.pub")), Err(KeyFileError::Io { .. })));
        // A vendor key file serves as the authority too (its signing key).
        let vendor = init(&dir).unwrap();
        assert_eq!(load_ca(&dir.join(SECRET_FILE)).unwrap().verifying_key(), vendor.public().signing);
        std::fs::write(dir.join("junk"), [0u8; CA_KEY_LEN]).unwrap();
        assert!(matches!(load_ca(&dir.join("junk")), Err(KeyFileError::CaFormat(_))));
        let mut other = bytes.clone();
        other.push(0);
        std::fs::write(dir.join("long"), &other).unwrap();
        assert!(matches!(load_ca(&dir.join("long")), Err(KeyFileError::CaFormat(_))));
        // Certificates: written once, read back; anything else refused.
        let cert = VendorKeyCertificate::certify(&vendor, 1, 10, 20, &ca).unwrap();
        let path = dir.join("vendor.cert");
        write_certificate(&path, &cert).unwrap();
        assert_eq!(load_certificate(&path).unwrap(), cert);
        assert!(matches!(write_certificate(&path, &cert), Err(KeyFileError::Exists(_))));
        assert!(matches!(load_certificate(&dir.join(SECRET_FILE)), Err(KeyFileError::Certificate { .. })));
        let mut long = std::fs::read(&path).unwrap();
        long.push(0);
        std::fs::write(&path, &long).unwrap();
        assert!(matches!(load_certificate(&path), Err(KeyFileError::Certificate { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_malformed_file_is_refused_with_its_reason() {
        let dir = temp("bad");
        let path = dir.join(SECRET_FILE);
        let good = VendorKeys::from_secrets(&[1; 32], &[2; 32]).to_bytes();
        std::fs::write(&path, good.as_slice()).unwrap();
        assert!(load_file(&path).is_ok());
        let refused = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            match load_file(&path) {
                Err(KeyFileError::Format { source, .. }) => source,
                other => unreachable!("{other:?}"),
            }
        };
        assert!(matches!(refused(&good[..68]), DecodeError::Truncated { needed: 69, have: 68 }));
        let mut long = good.to_vec();
        long.push(0);
        assert!(matches!(refused(&long), DecodeError::Oversized { .. }));
        // A text file (the pre-release `signing-seed <hex>` format, say) is not the key format.
        assert!(matches!(refused(&[b'#'; 69]), DecodeError::Malformed));
        let mut version = good.to_vec();
        version[4] = 2;
        assert!(matches!(refused(&version), DecodeError::UnsupportedVersion(2)));
        let message = load_file(&path).unwrap_err().to_string();
        assert!(message.contains("VendorKeys::to_bytes") && message.contains(SECRET_FILE), "{message}");
        assert!(matches!(load_file(&dir.join("absent")), Err(KeyFileError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
