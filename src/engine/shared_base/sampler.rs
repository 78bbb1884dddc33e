//! Turns one position's logits into the next token, plus OpenAI-style logprobs.
//!
//! Each sequence owns its own [`Sampler`] so that a seed reproduces a
//! completion no matter what else the engine is doing: the RNG is seeded from
//! the request and touched only by that sequence, and penalties count only
//! the tokens that sequence emitted.
//!
//! The sampler runs once per generated token over vocabularies of 50k–150k
//! entries, so it never sorts the vocabulary and keeps its vocabulary-sized
//! scratch buffers between calls. Nucleus (top-p) selection buckets tokens by
//! their distance below the best logit, finds the bucket in which the
//! cumulative probability crosses `top_p`, and sorts only that bucket's
//! members (after splitting it further when it is crowded). The passes over
//! the whole vocabulary are written lane-wise so the compiler vectorises
//! them, and `exp` is a polynomial (relative error ~1e-7) because libm's
//! scalar `expf` alone would cost more than everything else.
//!
//! Every ordering (argmax, nucleus, `top`) uses the same key, logit
//! descending then token id ascending, so they never disagree about which of
//! two tied tokens comes first.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// OpenAI reports this for tokens whose probability is practically zero;
/// clients choke on `-inf`, and JSON cannot carry it anyway.
pub const NEGLIGIBLE_LOGPROB: f32 = -9999.0;

/// Histogram resolution for nucleus selection: fine enough that a crossing
/// bucket holds few tokens for realistic logits, small enough to stay in L1.
const BUCKETS: usize = 2048;
/// Bucket index of tokens that cannot be sampled at all (-inf).
const NO_BUCKET: u16 = BUCKETS as u16;
/// A crossing bucket this small is cheaper to sort than to split.
const SORT_DIRECTLY: usize = 256;
/// Splitting cannot separate exact ties, so bound it and sort what is left.
const MAX_SPLITS: usize = 3;
/// Tokens further than this below the best (in units of the tempered
/// distribution) carry < 5e-18 of the mass each; lumping them into the last
/// bucket keeps one huge negative bias from coarsening every bucket.
const SPAN_NATS: f32 = 40.0;
/// Weights are summed per chunk so that a draw can skip whole chunks while
/// walking the cumulative sum in exactly the order the total was formed.
const CHUNK: usize = 64;
/// How many of the best tokens to try before building a histogram.
const FEW: usize = 64;
/// Lane count for the vectorisable passes.
const LANES: usize = 8;

/// Per-request sampling parameters, already validated and defaulted by the
/// caller.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0.0 (or negative, NaN, or too small to invert) means greedy;
    /// +inf samples uniformly.
    pub temperature: f32,
    /// 1.0 (or more, or NaN) disables nucleus sampling; 0 or less keeps only
    /// the best token.
    pub top_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Ids outside the logits are ignored: the caller validates them against
    /// the vocabulary while it can still answer with a 400.
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
    pub top_logprobs: usize,
    pub logprobs: bool,
}

/// One sampling decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// The chosen token's logprob under the distribution `top` reports.
    pub logprob: Option<f32>,
    /// Best first; ties go to the lower id.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error("the model returned no logits")]
    Empty,
    #[error("the model returned {len} logits; token ids are 32-bit")]
    TooLarge { len: usize },
    #[error("the logit for token {token} is {value}; the model produced non-finite output")]
    NonFinite { token: u32, value: f32 },
    #[error("the allowed-token mask covers {mask_tokens} tokens but the model has {vocab} logits")]
    MaskTooShort { mask_tokens: usize, vocab: usize },
    #[error("no token can be sampled: every token is masked out or has a -inf logit")]
    NothingAllowed,
}

/// Samples the tokens of one sequence; see the module docs.
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
    emitted: HashMap<u32, u32>,
    weights: Vec<f32>,
    chunk_mass: Vec<f64>,
    bucket_of: Vec<u16>,
    bucket_mass: Vec<f64>,
    candidates: Vec<u32>,
    split: Vec<u32>,
}

/// What one pass over the masked logits learns.
struct Extremes {
    max: f32,
    argmax: usize,
    min_finite: f32,
}

/// The last member of the nucleus in (logit desc, id asc) order, plus the
/// nucleus' total weight.
struct Nucleus {
    last_logit: f32,
    last_id: u32,
    mass: f64,
}

impl Nucleus {
    fn contains(&self, id: u32, logit: f32) -> bool {
        logit > self.last_logit || (logit == self.last_logit && id <= self.last_id)
    }
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Sampler {
        let rng = StdRng::seed_from_u64(config.seed);
        Sampler {
            config,
            rng,
            emitted: HashMap::new(),
            weights: Vec::new(),
            chunk_mass: Vec::new(),
            bucket_of: Vec::new(),
            bucket_mass: vec![0.0; BUCKETS + 1],
            candidates: Vec::new(),
            split: Vec::new(),
        }
    }

    /// Picks the next token. `logits` is left modified (bias, penalties and
    /// mask applied). A mask shorter than the logits is refused with
    /// [`SampleError::MaskTooShort`] rather than guessed at; extra words are
    /// ignored.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        allowed: Option<&[u32]>,
    ) -> Result<Sampled, SampleError> {
        if logits.is_empty() {
            return Err(SampleError::Empty);
        }
        if u32::try_from(logits.len()).is_err() {
            return Err(SampleError::TooLarge { len: logits.len() });
        }
        self.adjust(logits);
        // -inf is a legitimate "never" from the model; NaN and +inf would
        // poison the softmax, so they are refused before masking hides them.
        if let Some(token) = first_non_finite(logits) {
            return Err(SampleError::NonFinite {
                token: token as u32,
                value: logits[token],
            });
        }
        if let Some(mask) = allowed {
            apply_mask(logits, mask)?;
        }
        let extremes = extremes(logits).ok_or(SampleError::NothingAllowed)?;

        // A temperature so small that 1/T overflows is greedy in all but name.
        let inv_t = 1.0 / self.config.temperature;
        let sampled = if self.config.temperature > 0.0 && inv_t.is_finite() {
            self.sample_tempered(logits, &extremes, inv_t)
        } else {
            self.greedy(logits, &extremes)
        };
        *self.emitted.entry(sampled.token).or_insert(0) += 1;
        Ok(sampled)
    }

    fn adjust(&self, logits: &mut [f32]) {
        for &(token, bias) in &self.config.logit_bias {
            if let Some(logit) = logits.get_mut(token as usize) {
                *logit += bias;
            }
        }
        let (frequency, presence) = (self.config.frequency_penalty, self.config.presence_penalty);
        if frequency == 0.0 && presence == 0.0 {
            return;
        }
        // Each emitted token is adjusted exactly once, so the map's
        // iteration order cannot change the result.
        for (&token, &count) in &self.emitted {
            if let Some(logit) = logits.get_mut(token as usize) {
                *logit -= frequency * count as f32 + presence;
            }
        }
    }

    fn greedy(&mut self, logits: &[f32], extremes: &Extremes) -> Sampled {
        let token = extremes.argmax as u32;
        let k = self.config.top_logprobs;
        if !self.config.logprobs && k == 0 {
            return Sampled {
                token,
                logprob: None,
                top: Vec::new(),
            };
        }
        // Greedy reports the untempered distribution (T' = 1).
        let log_norm = self.fill_weights(logits, extremes.max, 1.0).ln() as f32;
        let logprob = |logit: f32| clamp_logprob(logit - extremes.max - log_norm);
        Sampled {
            token,
            logprob: self
                .config
                .logprobs
                .then(|| logprob(logits[extremes.argmax])),
            top: top_k(logits, k)
                .into_iter()
                .map(|(id, logit)| (id, logprob(logit)))
                .collect(),
        }
    }

    fn sample_tempered(&mut self, logits: &[f32], extremes: &Extremes, inv_t: f32) -> Sampled {
        let total = self.fill_weights(logits, extremes.max, inv_t);
        let top_p = self.config.top_p;
        let nucleus = if top_p.is_nan() || top_p >= 1.0 {
            None
        } else {
            Some(self.restrict_to_nucleus(logits, extremes, inv_t, total, f64::from(top_p)))
        };
        let mass = nucleus.as_ref().map_or(total, |n| n.mass);
        let token = self.draw(mass, extremes.argmax);
        let log_norm = mass.ln() as f32;
        let logprob = |id: u32, logit: f32| {
            if nucleus.as_ref().is_none_or(|n| n.contains(id, logit)) {
                clamp_logprob((logit - extremes.max) * inv_t - log_norm)
            } else {
                NEGLIGIBLE_LOGPROB
            }
        };
        Sampled {
            token,
            logprob: self
                .config
                .logprobs
                .then(|| logprob(token, logits[token as usize])),
            top: top_k(logits, self.config.top_logprobs)
                .into_iter()
                .map(|(id, logit)| (id, logprob(id, logit)))
                .collect(),
        }
    }

    /// Stores exp((logit - max) * inv_t) per token, sums it per chunk and
    /// returns the total.
    fn fill_weights(&mut self, logits: &[f32], max: f32, inv_t: f32) -> f64 {
        self.weights.resize(logits.len(), 0.0);
        for (weights, logits) in self.weights.chunks_mut(CHUNK).zip(logits.chunks(CHUNK)) {
            for (weight, &logit) in weights.iter_mut().zip(logits) {
                *weight = fast_exp((logit - max) * inv_t);
            }
        }
        self.sum_chunks()
    }

    fn sum_chunks(&mut self) -> f64 {
        self.chunk_mass.clear();
        self.chunk_mass
            .extend(self.weights.chunks(CHUNK).map(lane_sum));
        self.chunk_mass.iter().sum()
    }

    /// Inverse-CDF draw over the current weights, walking chunk sums first;
    /// `fallback` (the argmax, always drawable) covers rounding at the end.
    fn draw(&mut self, mass: f64, fallback: usize) -> u32 {
        let target = self.rng.random::<f64>() * mass;
        let mut cumulative = 0.0;
        for (chunk_index, &chunk_mass) in self.chunk_mass.iter().enumerate() {
            if cumulative + chunk_mass <= target {
                cumulative += chunk_mass;
                continue;
            }
            let start = chunk_index * CHUNK;
            let end = (start + CHUNK).min(self.weights.len());
            let mut last_positive = None;
            for id in start..end {
                let weight = f64::from(self.weights[id]);
                if weight == 0.0 {
                    continue;
                }
                cumulative += weight;
                last_positive = Some(id);
                if cumulative > target {
                    return id as u32;
                }
            }
            // The element walk fell just short of the chunk's sum.
            if let Some(id) = last_positive {
                return id as u32;
            }
        }
        fallback as u32
    }

    /// Finds the smallest (logit desc, id asc) prefix of the vocabulary
    /// whose weight reaches `top_p` of `total`, and zeroes every other
    /// token's weight so that [`Sampler::draw`] samples inside it.
    fn restrict_to_nucleus(
        &mut self,
        logits: &[f32],
        extremes: &Extremes,
        inv_t: f32,
        total: f64,
        top_p: f64,
    ) -> Nucleus {
        // Kept positive so that empty and zero-weight buckets never cross;
        // top_p <= 0 then keeps just the best token.
        let target = (top_p.max(0.0) * total).max(f64::MIN_POSITIVE);
        // Peaked distributions (the usual case) fill the nucleus within the
        // first few tokens; the histogram is only needed for flat ones.
        // Weights are at most 1, so a target above FEW rules this out.
        self.candidates.clear();
        let mut few_mass = 0.0;
        if target <= FEW as f64 {
            self.candidates
                .extend(top_k(logits, FEW).into_iter().map(|(id, _)| id));
            few_mass = self
                .candidates
                .iter()
                .map(|&id| f64::from(self.weights[id as usize]))
                .sum();
        }
        let remaining = if few_mass >= target {
            target
        } else {
            self.crossing_candidates(logits, extremes, inv_t, target)
        };

        let mut remaining = remaining;
        let mut end = 0;
        for &id in &self.candidates {
            end += 1;
            remaining -= f64::from(self.weights[id as usize]);
            if remaining <= 0.0 {
                break;
            }
        }
        let last_id = self
            .candidates
            .get(end.max(1) - 1)
            .copied()
            .unwrap_or(extremes.argmax as u32);
        let last_logit = logits[last_id as usize];

        for (weight, &logit) in self.weights.iter_mut().zip(logits) {
            *weight = if logit < last_logit { 0.0 } else { *weight };
        }
        // Ties with the last member but a higher id sit after it in the
        // sorted candidates (equal logits share every bucket, and `top_k`
        // orders ties by id).
        for &id in self.candidates.get(end..).unwrap_or(&[]) {
            if logits[id as usize] == last_logit {
                self.weights[id as usize] = 0.0;
            }
        }
        Nucleus {
            last_logit,
            last_id,
            mass: self.sum_chunks(),
        }
    }

    /// Leaves in `self.candidates`, sorted by (logit desc, id asc), the
    /// tokens of the bucket where the running mass crosses `target`, and
    /// returns how much of `target` they still have to cover.
    fn crossing_candidates(
        &mut self,
        logits: &[f32],
        extremes: &Extremes,
        inv_t: f32,
        target: f64,
    ) -> f64 {
        let max = extremes.max;
        let mut remaining = target;
        // Keys are distances below the best logit. The bucket index is
        // monotone in the key, so every token in a bucket before the crossing
        // one strictly beats every token from the crossing bucket on.
        let span = (max - extremes.min_finite).min(SPAN_NATS / inv_t);
        let mut scale = if span > 0.0 {
            BUCKETS as f32 / span
        } else {
            0.0
        };
        let mut low = 0.0f32;
        self.bucket_of.clear();
        self.bucket_of.extend(logits.iter().map(|&logit| {
            let b = bucket(max - logit, low, scale);
            if logit == f32::NEG_INFINITY {
                NO_BUCKET
            } else {
                b
            }
        }));
        self.bucket_mass.fill(0.0);
        for (&b, &weight) in self.bucket_of.iter().zip(&self.weights) {
            self.bucket_mass[usize::from(b)] += f64::from(weight);
        }
        let (mut crossing, before) = crossing_bucket(&self.bucket_mass[..BUCKETS], remaining);
        remaining -= before;
        self.candidates.clear();
        self.candidates.extend(
            self.bucket_of
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == crossing)
                .map(|(id, _)| id as u32),
        );

        // Crowded crossing bucket: split it into BUCKETS finer ones. Members
        // of the finer buckets before the new crossing one are in the
        // nucleus and need no list: the final threshold covers them.
        let mut splits = 0;
        while self.candidates.len() > SORT_DIRECTLY && splits < MAX_SPLITS {
            low += f32::from(crossing) / scale;
            scale *= BUCKETS as f32;
            if !scale.is_finite() {
                break;
            }
            self.bucket_mass.fill(0.0);
            for &id in &self.candidates {
                let b = bucket(max - logits[id as usize], low, scale);
                self.bucket_mass[usize::from(b)] += f64::from(self.weights[id as usize]);
            }
            let (finer, before) = crossing_bucket(&self.bucket_mass[..BUCKETS], remaining);
            remaining -= before;
            crossing = finer;
            self.split.clear();
            self.split.extend(
                self.candidates
                    .iter()
                    .copied()
                    .filter(|&id| bucket(max - logits[id as usize], low, scale) == crossing),
            );
            std::mem::swap(&mut self.candidates, &mut self.split);
            splits += 1;
        }

        // Members arrive in id order, so sorting by logit with the id as
        // tie-break is cheap on the common all-ties case.
        self.candidates.sort_unstable_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        remaining
    }
}

/// Bucket for a key (distance below the best logit) on a grid starting at
/// `low` with `scale` buckets per logit unit.
#[inline(always)]
fn bucket(key: f32, low: f32, scale: f32) -> u16 {
    // Keys just below `low` (rounding) land in bucket 0, keys past the span
    // (or infinite) in the last bucket. Selects rather than `min`/`max`
    // keep this branch-free for the vectoriser.
    let position = (key - low) * scale;
    let position = if position > 0.0 { position } else { 0.0 };
    let last = (BUCKETS - 1) as f32;
    let position = if position < last { position } else { last };
    position as i32 as u16
}

/// The first bucket at which the running mass reaches `target` (> 0), and
/// the mass before it. When rounding keeps the sum short, the last bucket
/// with any mass; the best token has weight 1, so there is one.
fn crossing_bucket(mass: &[f64], target: f64) -> (u16, f64) {
    let mut before = 0.0;
    let mut last = (0, 0.0);
    for (b, &m) in mass.iter().enumerate() {
        if m == 0.0 {
            continue;
        }
        if before + m >= target {
            return (b as u16, before);
        }
        last = (b as u16, before);
        before += m;
    }
    last
}

fn lane_sum(values: &[f32]) -> f64 {
    let mut lanes = [0.0f32; LANES];
    let (chunks, tail) = values.as_chunks::<LANES>();
    for chunk in chunks {
        for lane in 0..LANES {
            lanes[lane] += chunk[lane];
        }
    }
    let tail: f32 = tail.iter().sum();
    lanes.iter().map(|&lane| f64::from(lane)).sum::<f64>() + f64::from(tail)
}

/// exp(x) for x <= 0 as 2^n * p(r), branch-free so loops over it vectorise.
/// Exactly 0 below -87 (where f32 would go subnormal), so masked tokens
/// (-inf) get no weight.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    let clamped = if x < -87.0 { -87.0 } else { x.min(88.0) };
    let shifted = clamped * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    // Taylor series to r^6; |r| <= ln2 / 2 keeps the error below 2e-7.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // Wrapping ops: overflow checks (debug builds) would stop vectorisation;
    // the clamp keeps the exponent in 1..=215 anyway.
    let exponent = (shifted.to_bits())
        .wrapping_sub(ROUNDER.to_bits())
        .wrapping_add(127);
    let result = p * f32::from_bits(exponent << 23);
    if x < -87.0 { 0.0 } else { result }
}

fn first_non_finite(logits: &[f32]) -> Option<usize> {
    // On the bit pattern so the pass vectorises: NaN has a magnitude above
    // infinity's, +inf is the one infinity with the sign bit clear.
    const INFINITY: i32 = 0x7f80_0000;
    let is_bad = |logit: f32| {
        let bits = logit.to_bits() as i32;
        (bits & 0x7fff_ffff) > INFINITY || bits == INFINITY
    };
    let mut bad = [false; LANES];
    let (chunks, tail) = logits.as_chunks::<LANES>();
    for chunk in chunks {
        for (flag, &logit) in bad.iter_mut().zip(chunk) {
            *flag |= is_bad(logit);
        }
    }
    if bad.iter().any(|&b| b) || tail.iter().any(|&l| is_bad(l)) {
        logits.iter().position(|&l| is_bad(l))
    } else {
        None
    }
}

fn apply_mask(logits: &mut [f32], mask: &[u32]) -> Result<(), SampleError> {
    let words = logits.len().div_ceil(32);
    if mask.len() < words {
        return Err(SampleError::MaskTooShort {
            mask_tokens: mask.len() * 32,
            vocab: logits.len(),
        });
    }
    for (chunk, &word) in logits.chunks_mut(32).zip(mask) {
        // Grammar masks are mostly all-ones or all-zeros words.
        if word == u32::MAX {
            continue;
        }
        if word == 0 {
            chunk.fill(f32::NEG_INFINITY);
            continue;
        }
        for (bit, logit) in chunk.iter_mut().enumerate() {
            if word & (1 << bit) == 0 {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
    Ok(())
}

/// `None` when every logit is -inf (nothing can be sampled). Expects no NaN.
fn extremes(logits: &[f32]) -> Option<Extremes> {
    // Per lane: best logit, where it first occurred, smallest finite logit.
    let mut max_lanes = [f32::NEG_INFINITY; LANES];
    let mut arg_lanes = [0u32; LANES];
    let mut min_lanes = [f32::INFINITY; LANES];
    let (chunks, tail) = logits.as_chunks::<LANES>();
    for (index, chunk) in chunks.iter().enumerate() {
        let base = (index * LANES) as u32;
        for lane in 0..LANES {
            let logit = chunk[lane];
            let better = logit > max_lanes[lane];
            max_lanes[lane] = if better { logit } else { max_lanes[lane] };
            arg_lanes[lane] = if better {
                base + lane as u32
            } else {
                arg_lanes[lane]
            };
            let finite = if logit == f32::NEG_INFINITY {
                f32::INFINITY
            } else {
                logit
            };
            min_lanes[lane] = if finite < min_lanes[lane] {
                finite
            } else {
                min_lanes[lane]
            };
        }
    }
    let tail_start = chunks.len() * LANES;
    let lanes = max_lanes
        .iter()
        .zip(arg_lanes)
        .map(|(&l, a)| (l, a as usize));
    let tail_entries = tail.iter().enumerate().map(|(i, &l)| (l, tail_start + i));
    let (max, argmax) = lanes.chain(tail_entries).fold(
        (f32::NEG_INFINITY, usize::MAX),
        |(best, at), (logit, id)| {
            if logit > best || (logit == best && id < at) {
                (logit, id)
            } else {
                (best, at)
            }
        },
    );
    if max == f32::NEG_INFINITY {
        return None;
    }
    let min_finite = min_lanes
        .iter()
        .chain(tail)
        .copied()
        .filter(|&l| l != f32::NEG_INFINITY)
        .fold(f32::INFINITY, f32::min);
    Some(Extremes {
        max,
        argmax,
        min_finite,
    })
}

/// The `k` best tokens by (logit desc, id asc) as (id, logit). Disallowed
/// tokens fill the tail when fewer than `k` are allowed, so the caller can
/// always return `k` entries.
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    // Strictly better than this gets in; ties lose to the lower id already
    // held.
    let mut threshold = f32::NEG_INFINITY;
    for (chunk_index, chunk) in logits.chunks(LANES * 2).enumerate() {
        if !chunk
            .iter()
            .fold(false, |any, &logit| any | (logit > threshold))
        {
            continue;
        }
        for (offset, &logit) in chunk.iter().enumerate() {
            if logit <= threshold {
                continue;
            }
            let at = best.partition_point(|&(_, l)| l >= logit);
            best.insert(at, ((chunk_index * LANES * 2 + offset) as u32, logit));
            best.truncate(k);
            if best.len() == k {
                threshold = best[k - 1].1;
            }
        }
    }
    let mut id = 0u32;
    while best.len() < k {
        if !best.iter().any(|&(taken, _)| taken == id) {
            best.push((id, f32::NEG_INFINITY));
        }
        id += 1;
    }
    best
}

fn clamp_logprob(logprob: f32) -> f32 {
    if logprob.is_nan() {
        NEGLIGIBLE_LOGPROB
    } else {
        logprob.clamp(NEGLIGIBLE_LOGPROB, 0.0)
    }
}

#[cfg(test)]
mod tests;
