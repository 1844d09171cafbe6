//! DuoAttention's head pattern of a model: calibrated once on DuoAttention's passkey prompts
//! ([`longctx_tasks::passkeys`]) through [`longctx_kv::DuoCalibration`], then kept in the
//! cache directory under the model's content hash, the streaming heads' sinks and window and
//! the calibration's settings, so that a pattern is never reused for another model or
//! another calibration.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use longctx_kv::{DuoAttention, DuoCalibration, DuoTally, HeadPattern, Reservation};
use longctx_models::LoadedModel;
use longctx_tasks::needle::Haystack;
use longctx_tasks::passkeys::PasskeyCalibration;
use sha2::{Digest, Sha256};

use crate::assets;

/// The calibration every pattern is made by: DuoAttention's 10 passkeys of 32 words, over
/// 6 texts of 800 to 3,200 words (about 1,000 to 4,200 tokens before the passkeys, within
/// an 8K model's context; DuoAttention's run from 1,000 to 32,000 tokens over 20).
pub const CALIBRATION: PasskeyCalibration = PasskeyCalibration {
    prompts: 6,
    min_words: 800,
    max_words: 3200,
    passkeys: 10,
    passkey_words: 32,
    seed: 0,
};

/// The model's head pattern for `duo`'s sinks and window: read from the cache directory,
/// or calibrated (a few prefills of the model) and stored there first. The model is left
/// with the calibrating cache; install a method's cache after.
pub fn head_pattern(loaded: &mut LoadedModel, duo: DuoAttention) -> Result<HeadPattern> {
    let path = pattern_path(&loaded.source, duo, &CALIBRATION)?;
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the head pattern {}", path.display()))?;
        return HeadPattern::from_tsv(&text).with_context(|| {
            format!(
                "head pattern {} (delete it to calibrate again)",
                path.display()
            )
        });
    }
    let essays = Haystack::from_dir(&assets::haystack_dir()?)?;
    let start = Instant::now();
    let pattern = calibrate(loaded, duo, &CALIBRATION, &essays)?;
    tracing::info!(
        "calibrated DuoAttention's head pattern in {:.0} s: {}",
        start.elapsed().as_secs_f64(),
        path.display()
    );
    let dir = path.parent().expect("the pattern path is in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Written whole, then moved in place: a killed run leaves no half pattern behind.
    let partial = path.with_extension("tsv.partial");
    std::fs::write(&partial, pattern.to_tsv())
        .and_then(|()| std::fs::rename(&partial, &path))
        .with_context(|| format!("writing the head pattern {}", path.display()))?;
    Ok(pattern)
}

/// The SHA-256 of a pattern's file form: what a stored result records, so that a result is
/// not reused once the pattern it ran with changed (another calibration, a file replaced).
pub fn fingerprint(pattern: &HeadPattern) -> String {
    format!("{:x}", Sha256::digest(pattern.to_tsv().as_bytes()))
}

/// Where the pattern of the model at `model` for `duo` and `calibration` is kept.
pub fn pattern_path(
    model: &Path,
    duo: DuoAttention,
    calibration: &PasskeyCalibration,
) -> Result<PathBuf> {
    let sha = assets::model_sha256(model)
        .with_context(|| format!("hashing the model {}", model.display()))?;
    let c = calibration;
    Ok(assets::cache_dir().join("head-patterns").join(format!(
        "{}-sinks{}-recent{}-passkeys{}x{}-words{}-{}x{}-seed{}.tsv",
        &sha[..16],
        duo.sinks,
        duo.recent,
        c.passkeys,
        c.passkey_words,
        c.min_words,
        c.max_words,
        c.prompts,
        c.seed
    )))
}

/// Score every head of the model on `calibration`'s prompts: each prompt is fed whole
/// (context, then the questions with their passkeys), and each head scores how far its
/// output moves on the questions and passkeys when it reads only `duo`'s sinks and window.
/// Prompts longer than the model's context are left out; none fitting is an error.
pub fn calibrate(
    loaded: &mut LoadedModel,
    duo: DuoAttention,
    calibration: &PasskeyCalibration,
    essays: &Haystack,
) -> Result<HeadPattern> {
    calibration
        .validate()
        .map_err(|e| anyhow::anyhow!("calibration settings: {e}"))?;
    let tally = Arc::new(Mutex::new(DuoTally::default()));
    let shared = tally.clone();
    loaded
        .model
        .set_cache(Box::new(move |shape, rope, _| {
            Ok(Box::new(DuoCalibration::new(shape, rope, duo, shared)?))
        }))
        .context("DuoAttention's calibration")?;
    let limit = loaded.model.context_limit();
    let mut fed = 0;
    for (i, prompt) in calibration.prompts(essays).iter().enumerate() {
        let mut tokens = loaded.tokenizer.encode(&prompt.context, true)?;
        let context = tokens.len();
        tokens.extend(loaded.tokenizer.encode(&prompt.answers, false)?);
        if tokens.len() > limit {
            tracing::warn!(
                "calibration prompt {i} holds {} tokens, beyond the model's {limit}: left out",
                tokens.len()
            );
            continue;
        }
        tally
            .lock()
            .map_err(|_| anyhow::anyhow!("the calibration's tally was poisoned"))?
            .scored_from = context;
        loaded.model.reset();
        loaded.model.reserve(Reservation::prompt(tokens.len(), 0))?;
        loaded.model.prefill(&tokens)?;
        fed += 1;
    }
    loaded.model.reset();
    if fed == 0 {
        anyhow::bail!(
            "no calibration prompt fits the model's context of {limit} tokens: DuoAttention's head pattern needs one of at least {} words",
            calibration.min_words
        );
    }
    let pattern = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("the calibration's tally was poisoned"))?
        .pattern()?;
    Ok(pattern)
}
