//! The HS256 secret when none is configured: generated on first start and kept
//! in the data directory, readable only by the service's user.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

/// File name of the generated secret inside `storage.path`.
pub const SECRET_FILE: &str = "auth.secret";

/// Where the secret came from; only a freshly generated one prints a banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Configured,
    Existing(PathBuf),
    Generated(PathBuf),
}

/// Returns the configured secret, or the one kept in `data_dir`, generating it
/// on first start.
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> std::io::Result<(Vec<u8>, SecretSource)> {
    if let Some(secret) = configured {
        return Ok((secret.as_bytes().to_vec(), SecretSource::Configured));
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim().to_owned();
            if secret.len() < 32 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} holds fewer than 32 characters", path.display()),
                ));
            }
            return Ok((secret.into_bytes(), SecretSource::Existing(path)));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    Ok((secret.into_bytes(), SecretSource::Generated(path)))
}

/// The secret for tokens that name no `kid`: the configured one; else, when
/// no other keys are configured, the generated one (created on first start).
/// A deployment that configures `auth.keys` or `auth.jwks_file` and no
/// `hs256_secret` has no default key: every token must name its key.
pub fn default_secret(
    settings: &crate::config::AuthSettings,
    data_dir: &Path,
) -> std::io::Result<(Option<Vec<u8>>, SecretSource)> {
    if settings.disabled {
        return Ok((None, SecretSource::Configured));
    }
    let external = !settings.keys.is_empty() || settings.jwks_file.is_some();
    if external && settings.hs256_secret.is_none() {
        return Ok((None, SecretSource::Configured));
    }
    let (secret, source) = load_or_create_secret(settings.hs256_secret.as_deref(), data_dir)?;
    Ok((Some(secret), source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = load_or_create_secret(None, dir.path()).unwrap();
        assert!(matches!(source, SecretSource::Generated(_)));
        let (again, source) = load_or_create_secret(None, dir.path()).unwrap();
        assert!(matches!(source, SecretSource::Existing(_)));
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn configured_secret_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (s, source) = load_or_create_secret(Some("x".repeat(40).as_str()), dir.path()).unwrap();
        assert_eq!(s, "x".repeat(40).into_bytes());
        assert_eq!(source, SecretSource::Configured);
        assert!(!dir.path().join(SECRET_FILE).exists());
    }
}
