//! Unit tests of `sampler`.

use super::*;

fn config(temperature: f32, top_p: f32, seed: u64) -> SamplingConfig {
    SamplingConfig {
        temperature,
        top_p,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        logit_bias: Vec::new(),
        seed,
        top_logprobs: 0,
        logprobs: true,
    }
}

/// Independent reference: log_softmax in f64.
fn log_softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|&l| f64::from(l) / temperature).collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
    scaled.iter().map(|s| s - lse).collect()
}

/// A deterministic stand-in for model output that does not share the
/// sampler's RNG.
fn pseudo_logits(vocab: usize, step: u64, spread: f32) -> Vec<f32> {
    let mut state = step.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..vocab)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Sum of uniforms: roughly normal, like real logits.
            let u = (0..4)
                .map(|i| ((state >> (i * 16)) & 0xFFFF) as f32 / 65536.0)
                .sum::<f32>();
            (u - 2.0) * spread
        })
        .collect()
}

/// Lifts a handful of tokens far above the rest, as a confident model
/// does most of the time.
fn peak(logits: &mut [f32], step: u64) {
    let len = logits.len() as u64;
    for (rank, lift) in [14.0, 13.0, 12.5, 11.0, 10.0, 9.0].into_iter().enumerate() {
        let id = (step * 7919 + rank as u64 * 104_729) % len;
        logits[id as usize] += lift;
    }
}

fn mask_of(vocab: usize, allowed: &[u32]) -> Vec<u32> {
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    for &id in allowed {
        mask[id as usize / 32] |= 1 << (id % 32);
    }
    mask
}

fn counts(sampler: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
    let mut counts = vec![0; logits.len()];
    for _ in 0..draws {
        let token = sampler.sample(&mut logits.to_vec(), None).unwrap().token;
        counts[token as usize] += 1;
    }
    counts
}

fn chi_square(observed: &[usize], expected_probs: &[f64]) -> f64 {
    let total: usize = observed.iter().sum();
    observed
        .iter()
        .zip(expected_probs)
        .filter(|(_, p)| **p > 0.0)
        .map(|(&o, &p)| {
            let e = p * total as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

#[test]
fn fast_exp_is_accurate_and_exactly_zero_past_the_cutoff() {
    for i in 0..=400_000 {
        let x = -80.0 * i as f32 / 400_000.0;
        let exact = f64::from(x).exp();
        let relative = (f64::from(fast_exp(x)) - exact).abs() / exact;
        assert!(relative < 5e-7, "exp({x}): {} vs {exact}", fast_exp(x));
    }
    assert_eq!(fast_exp(0.0), 1.0);
    assert_eq!(fast_exp(-87.5), 0.0);
    assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
}

#[test]
fn greedy_picks_argmax_and_reports_log_softmax() {
    let logits = [1.0, 3.0, 2.0, 3.0, -1.0];
    let mut sampler = Sampler::new(SamplingConfig {
        top_logprobs: 3,
        ..config(0.0, 0.5, 1)
    });
    let sampled = sampler.sample(&mut logits.clone(), None).unwrap();
    let reference = log_softmax(&logits, 1.0);
    // Tie between ids 1 and 3 goes to the lower id.
    assert_eq!(sampled.token, 1);
    assert!((f64::from(sampled.logprob.unwrap()) - reference[1]).abs() < 1e-5);
    let ids: Vec<u32> = sampled.top.iter().map(|t| t.0).collect();
    assert_eq!(ids, vec![1, 3, 2]);
    for (id, logprob) in &sampled.top {
        assert!((f64::from(*logprob) - reference[*id as usize]).abs() < 1e-5);
    }
}

#[test]
fn degenerate_temperatures_do_not_break_sampling() {
    let logits = [0.5, 2.0, -1.0];
    for temperature in [1.0e-45, -1.0, f32::NAN] {
        let mut sampler = Sampler::new(SamplingConfig {
            top_logprobs: 3,
            ..config(temperature, 0.9, 4)
        });
        let sampled = sampler.sample(&mut logits.clone(), None).unwrap();
        assert_eq!(sampled.token, 1, "temperature {temperature}");
        assert!(sampled.top.iter().all(|t| t.1.is_finite()));
    }
    // Infinite temperature: every token equally likely.
    let mut hot = Sampler::new(config(f32::INFINITY, 1.0, 4));
    let drawn = counts(&mut hot, &logits, 3000);
    assert!(chi_square(&drawn, &[1.0 / 3.0; 3]) < 20.0, "{drawn:?}");
}

#[test]
fn greedy_without_logprobs_reports_nothing() {
    let mut sampler = Sampler::new(SamplingConfig {
        logprobs: false,
        ..config(0.0, 1.0, 1)
    });
    let sampled = sampler.sample(&mut [0.5, -2.0, 4.0], None).unwrap();
    assert_eq!(sampled.token, 2);
    assert_eq!(sampled.logprob, None);
    assert!(sampled.top.is_empty());
}

#[test]
fn logit_bias_forces_and_forbids_tokens() {
    let logits = [2.0, 1.0, 0.5, 0.0];
    let mut forced = Sampler::new(SamplingConfig {
        logit_bias: vec![(3, 100.0), (99, 5.0)],
        ..config(1.0, 1.0, 7)
    });
    for _ in 0..200 {
        assert_eq!(forced.sample(&mut logits.clone(), None).unwrap().token, 3);
    }
    let mut forbidden = Sampler::new(SamplingConfig {
        logit_bias: vec![(0, -100.0)],
        ..config(1.0, 1.0, 7)
    });
    let drawn = counts(&mut forbidden, &logits, 2000);
    assert_eq!(drawn[0], 0);
    assert!(drawn[1] > 0 && drawn[2] > 0 && drawn[3] > 0);
    let mut greedy = Sampler::new(SamplingConfig {
        logit_bias: vec![(0, -100.0)],
        ..config(0.0, 1.0, 7)
    });
    assert_eq!(greedy.sample(&mut logits.clone(), None).unwrap().token, 1);
}

#[test]
fn penalties_follow_openai_formula_over_emitted_tokens() {
    let mut sampler = Sampler::new(SamplingConfig {
        frequency_penalty: 0.5,
        presence_penalty: 0.3,
        top_logprobs: 4,
        ..config(0.0, 1.0, 3)
    });
    // Emit 0, 0, 1: the second 0 survives a 0.8 penalty.
    for (logits, expected) in [
        ([10.0, 0.0, 0.0, 0.0], 0),
        ([10.0, 0.0, 0.0, 0.0], 0),
        ([0.0, 10.0, 0.0, 0.0], 1),
    ] {
        assert_eq!(
            sampler.sample(&mut logits.clone(), None).unwrap().token,
            expected
        );
    }
    let sampled = sampler.sample(&mut [1.0, 1.0, 1.0, 1.0], None).unwrap();
    // 0: 1 - (0.5 * 2 + 0.3); 1: 1 - (0.5 * 1 + 0.3); 2, 3 untouched.
    let adjusted = [-0.3, 0.2, 1.0, 1.0];
    let reference = log_softmax(&adjusted, 1.0);
    assert_eq!(sampled.token, 2);
    let ids: Vec<u32> = sampled.top.iter().map(|t| t.0).collect();
    assert_eq!(ids, vec![2, 3, 1, 0]);
    for (id, logprob) in &sampled.top {
        assert!(
            (f64::from(*logprob) - reference[*id as usize]).abs() < 1e-5,
            "token {id}: {logprob} vs {}",
            reference[*id as usize]
        );
    }
    // Negative penalties encourage repetition: token 2 was just emitted.
    let mut encouraging = Sampler::new(SamplingConfig {
        presence_penalty: -2.0,
        ..config(0.0, 1.0, 3)
    });
    encouraging.sample(&mut [0.0, 0.0, 5.0], None).unwrap();
    assert_eq!(
        encouraging
            .sample(&mut [0.0, 1.5, 0.0], None)
            .unwrap()
            .token,
        2
    );
}

#[test]
fn penalties_only_count_this_samplers_tokens() {
    let penalised = |sampler: &mut Sampler| {
        sampler
            .sample(&mut [1.0, 1.0], None)
            .unwrap()
            .top
            .iter()
            .find(|t| t.0 == 0)
            .map(|t| t.1)
    };
    let base = SamplingConfig {
        frequency_penalty: 1.0,
        top_logprobs: 2,
        ..config(0.0, 1.0, 3)
    };
    let mut a = Sampler::new(base.clone());
    let mut b = Sampler::new(base);
    a.sample(&mut [5.0, 0.0], None).unwrap();
    // b never emitted token 0, so it sees a uniform distribution.
    assert!((penalised(&mut b).unwrap() - 0.5f32.ln()).abs() < 1e-6);
    assert!(penalised(&mut a).unwrap() < 0.5f32.ln() - 0.1);
}

#[test]
fn mask_is_respected_across_word_boundaries() {
    let vocab = 70;
    let logits: Vec<f32> = (0..vocab).map(|i| i as f32 / 10.0).collect();
    let allowed_ids = [2u32, 33, 64];
    let mask = mask_of(vocab, &allowed_ids);
    let mut sampler = Sampler::new(SamplingConfig {
        top_logprobs: 4,
        ..config(1.0, 1.0, 11)
    });
    let mut seen = [0usize; 3];
    for _ in 0..3000 {
        let sampled = sampler.sample(&mut logits.clone(), Some(&mask)).unwrap();
        let slot = allowed_ids.iter().position(|&a| a == sampled.token);
        seen[slot.expect("sampled a masked token")] += 1;
        let ids: Vec<u32> = sampled.top.iter().map(|t| t.0).collect();
        // Three allowed tokens best first, then the lowest masked id.
        assert_eq!(ids, vec![64, 33, 2, 0]);
        assert_eq!(sampled.top[3].1, NEGLIGIBLE_LOGPROB);
        let mass: f32 = sampled.top[..3].iter().map(|t| t.1.exp()).sum();
        assert!((mass - 1.0).abs() < 1e-5);
    }
    let reference = log_softmax(&[0.2, 3.3, 6.4], 1.0);
    let probs: Vec<f64> = reference.iter().map(|l| l.exp()).collect();
    assert!(chi_square(&seen, &probs) < 20.0, "{seen:?}");

    let mut greedy = Sampler::new(config(0.0, 1.0, 0));
    let only_low = mask_of(vocab, &[2, 33]);
    assert_eq!(
        greedy
            .sample(&mut logits.clone(), Some(&only_low))
            .unwrap()
            .token,
        33
    );
}

#[test]
fn seeded_sampling_repeats_exactly_and_seeds_differ() {
    let run = |seed: u64, interleave: bool| {
        let mut sampler = Sampler::new(SamplingConfig {
            top_logprobs: 2,
            ..config(0.9, 0.95, seed)
        });
        let mut other = Sampler::new(config(1.0, 1.0, seed));
        (0..300u64)
            .map(|step| {
                if interleave {
                    other
                        .sample(&mut pseudo_logits(1000, step + 77, 3.0), None)
                        .unwrap();
                }
                sampler
                    .sample(&mut pseudo_logits(1000, step, 3.0), None)
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let first = run(42, false);
    assert_eq!(first, run(42, true));
    let tokens = |run: &[Sampled]| run.iter().map(|s| s.token).collect::<Vec<_>>();
    assert_ne!(tokens(&first), tokens(&run(43, false)));
    // The logits really leave room for different choices.
    let distinct: std::collections::HashSet<u32> = tokens(&first).into_iter().collect();
    assert!(distinct.len() > 100);
}

#[test]
fn empirical_frequencies_match_tempered_softmax() {
    let logits = [1.0, 0.2, -0.5, 2.0, 0.0, -3.0];
    let temperature = 0.7;
    let mut sampler = Sampler::new(config(temperature, 1.0, 2024));
    let reference = log_softmax(&logits, f64::from(temperature));
    let mut seen = vec![0usize; logits.len()];
    for _ in 0..60_000 {
        let sampled = sampler.sample(&mut logits.clone(), None).unwrap();
        let id = sampled.token as usize;
        seen[id] += 1;
        assert!((f64::from(sampled.logprob.unwrap()) - reference[id]).abs() < 1e-5);
    }
    let probs: Vec<f64> = reference.iter().map(|l| l.exp()).collect();
    // 5 degrees of freedom: 30 is beyond the 99.99th percentile, while
    // sampling at the wrong temperature scores in the thousands.
    let statistic = chi_square(&seen, &probs);
    assert!(statistic < 30.0, "chi-square {statistic}, counts {seen:?}");
    let untempered: Vec<f64> = log_softmax(&logits, 1.0).iter().map(|l| l.exp()).collect();
    assert!(chi_square(&seen, &untempered) > 300.0);
}

#[test]
fn top_p_excludes_the_tail_and_renormalises() {
    let probs = [0.5f64, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
    let mut sampler = Sampler::new(SamplingConfig {
        top_logprobs: 4,
        ..config(1.0, 0.75, 5)
    });
    let mut seen = vec![0usize; 4];
    for _ in 0..20_000 {
        let sampled = sampler.sample(&mut logits.clone(), None).unwrap();
        seen[sampled.token as usize] += 1;
        let top = &sampled.top;
        assert_eq!(
            top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!((f64::from(top[0].1) - (0.5f64 / 0.8).ln()).abs() < 1e-5);
        assert!((f64::from(top[1].1) - (0.3f64 / 0.8).ln()).abs() < 1e-5);
        assert_eq!(top[2].1, NEGLIGIBLE_LOGPROB);
        assert_eq!(top[3].1, NEGLIGIBLE_LOGPROB);
        let mass: f32 = top.iter().map(|t| t.1.exp()).sum();
        assert!(mass <= 1.0 + 1e-5 && mass > 1.0 - 1e-5);
        let chosen = top.iter().find(|t| t.0 == sampled.token).unwrap();
        assert_eq!(sampled.logprob, Some(chosen.1));
    }
    assert_eq!(seen[2] + seen[3], 0);
    assert!(chi_square(&seen[..2], &[0.625, 0.375]) < 20.0, "{seen:?}");

    // top_p at or below zero keeps the single best token.
    let mut tight = Sampler::new(config(1.0, 0.0, 5));
    for _ in 0..100 {
        assert_eq!(tight.sample(&mut logits.clone(), None).unwrap().token, 0);
    }
}

/// The nucleus must equal the prefix a full sort would choose.
#[test]
fn nucleus_matches_a_full_sort_on_large_vocabularies() {
    let mut cases: Vec<(Vec<f32>, f32, f32)> = Vec::new();
    for (step, spread) in [(1u64, 0.5f32), (2, 3.0), (3, 12.0), (4, 0.001)] {
        for temperature in [0.4f32, 1.0, 1.7] {
            for top_p in [0.05f32, 0.5, 0.9, 0.999] {
                cases.push((pseudo_logits(50_000, step, spread), temperature, top_p));
            }
        }
    }
    // Exact ties must be broken towards lower ids; coarse values make
    // many ties inside the crossing bucket.
    let ties: Vec<f32> = (0..20_000).map(|i| ((i * 7919) % 13) as f32).collect();
    cases.push((ties, 1.0, 0.5));
    cases.push((vec![0.0; 1000], 1.0, 0.4999));
    // Peaked: the nucleus is found among the few best tokens.
    for top_p in [0.3f32, 0.9, 0.99] {
        let mut peaked = pseudo_logits(50_000, 5, 2.0);
        peak(&mut peaked, 5);
        cases.push((peaked, 1.0, top_p));
    }
    // One very negative outlier stretches the span.
    let mut outlier = pseudo_logits(30_000, 9, 2.0);
    outlier[17] = -1.0e4;
    cases.push((outlier, 1.0, 0.9));

    for (case, (logits, temperature, top_p)) in cases.iter().enumerate() {
        let mut sampler = Sampler::new(config(*temperature, *top_p, 1));
        let extremes = extremes(logits).unwrap();
        let inv_t = 1.0 / temperature;
        let total = sampler.fill_weights(logits, extremes.max, inv_t);
        let weights = sampler.weights.clone();
        let nucleus =
            sampler.restrict_to_nucleus(logits, &extremes, inv_t, total, f64::from(*top_p));
        let chosen: Vec<u32> = (0..logits.len() as u32)
            .filter(|&id| nucleus.contains(id, logits[id as usize]))
            .collect();
        // Outside the nucleus nothing can be drawn; inside, weights stay.
        for (id, weight) in sampler.weights.iter().enumerate() {
            let inside = chosen.binary_search(&(id as u32)).is_ok();
            assert_eq!(
                *weight,
                if inside { weights[id] } else { 0.0 },
                "case {case}"
            );
        }

        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        let target = f64::from(*top_p) * total;
        let mut cumulative = 0.0;
        let mut size = 0;
        for &id in &order {
            cumulative += f64::from(weights[id as usize]);
            size += 1;
            if cumulative >= target {
                break;
            }
        }
        let mut expected = order[..size].to_vec();
        expected.sort_unstable();
        assert_eq!(chosen.len(), expected.len(), "case {case}: nucleus size");
        assert_eq!(chosen, expected, "case {case}");
        let last = order[size - 1];
        assert_eq!(
            (nucleus.last_id, nucleus.last_logit),
            (last, logits[last as usize])
        );
        if *top_p == 0.4999 {
            assert_eq!(expected, (0..500).collect::<Vec<u32>>());
        }
    }
}

#[test]
fn sampled_tokens_stay_inside_the_nucleus_on_a_large_vocabulary() {
    let mut sampler = Sampler::new(SamplingConfig {
        top_logprobs: 20,
        ..config(1.0, 0.5, 8)
    });
    for step in 0..50 {
        let logits = pseudo_logits(50_000, step, 4.0);
        let sampled = sampler.sample(&mut logits.clone(), None).unwrap();
        assert!(sampled.logprob.unwrap() > NEGLIGIBLE_LOGPROB);
        assert_eq!(sampled.top.len(), 20);
        let mass: f64 = sampled.top.iter().map(|t| f64::from(t.1).exp()).sum();
        assert!(mass <= 1.0 + 1e-5);
        for pair in sampled.top.windows(2) {
            assert!(pair[0].1 >= pair[1].1);
        }
        for (id, logprob) in &sampled.top {
            // Reported values are either the renormalised probability or
            // the out-of-nucleus sentinel, never -inf or NaN.
            assert!(logprob.is_finite());
            let reference = log_softmax(&logits, 1.0)[*id as usize];
            if *logprob != NEGLIGIBLE_LOGPROB {
                assert!(f64::from(*logprob) > reference);
            }
        }
    }
}

#[test]
fn reported_logprobs_never_go_below_the_floor() {
    let mut greedy = Sampler::new(SamplingConfig {
        top_logprobs: 3,
        ..config(0.0, 1.0, 0)
    });
    let sampled = greedy.sample(&mut [0.0, -1.0e6, -2.0], None).unwrap();
    assert_eq!(sampled.top[0].0, 0);
    assert_eq!(sampled.top[2], (1, NEGLIGIBLE_LOGPROB));

    let mut cold = Sampler::new(SamplingConfig {
        top_logprobs: 2,
        ..config(0.01, 1.0, 0)
    });
    let sampled = cold.sample(&mut [0.0, -100.0], None).unwrap();
    assert_eq!(sampled.token, 0);
    assert_eq!(sampled.top[1], (1, NEGLIGIBLE_LOGPROB));
    assert!(sampled.top[0].1 <= 0.0);
}

#[test]
fn errors_instead_of_panicking_on_bad_input() {
    let mut sampler = Sampler::new(config(1.0, 0.9, 0));
    assert!(matches!(
        sampler.sample(&mut [0.0, f32::NAN, 1.0], None),
        Err(SampleError::NonFinite { token: 1, .. })
    ));
    assert!(matches!(
        sampler.sample(&mut [f32::INFINITY, 0.0], None),
        Err(SampleError::NonFinite { token: 0, .. })
    ));
    // NaN hidden behind the mask is still a broken model.
    assert!(matches!(
        sampler.sample(&mut [f32::NAN, 0.0], Some(&[0b10])),
        Err(SampleError::NonFinite { token: 0, .. })
    ));
    assert_eq!(
        sampler.sample(&mut [1.0, 2.0, 3.0], Some(&[0])),
        Err(SampleError::NothingAllowed)
    );
    assert_eq!(
        sampler.sample(&mut [f32::NEG_INFINITY; 3], None),
        Err(SampleError::NothingAllowed)
    );
    // Allowed only where the logit is -inf: still nothing to sample.
    assert_eq!(
        sampler.sample(&mut [f32::NEG_INFINITY, 2.0], Some(&[0b01])),
        Err(SampleError::NothingAllowed)
    );
    assert_eq!(
        sampler.sample(&mut [0.0; 40], Some(&[u32::MAX])),
        Err(SampleError::MaskTooShort {
            mask_tokens: 32,
            vocab: 40
        })
    );
    assert_eq!(sampler.sample(&mut [], None), Err(SampleError::Empty));
    let mut greedy = Sampler::new(config(0.0, 1.0, 0));
    assert_eq!(
        greedy.sample(&mut [1.0, 2.0], Some(&[0])),
        Err(SampleError::NothingAllowed)
    );
}

/// CPU time of this thread (Linux), immune to other load on the box.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

#[test]
#[ignore]
fn phase_timing() {
    let vocab = 49_152;
    let logits = pseudo_logits(vocab, 3, 4.0);
    let mut sampler = Sampler::new(config(1.0, 0.9, 1));
    let ext = extremes(&logits).unwrap();
    // Best of many short batches: the least disturbed by other load.
    let time = |name: &str, f: &mut dyn FnMut()| {
        let best = (0..200)
            .map(|_| {
                let start = std::time::Instant::now();
                for _ in 0..5 {
                    f();
                }
                start.elapsed() / 5
            })
            .min()
            .unwrap();
        println!("{name:<20} {best:>10?}");
    };
    time("lane_sum (baseline)", &mut || {
        std::hint::black_box(lane_sum(std::hint::black_box(&logits)));
    });
    time("non_finite", &mut || {
        std::hint::black_box(first_non_finite(std::hint::black_box(&logits)));
    });
    time("extremes", &mut || {
        std::hint::black_box(extremes(std::hint::black_box(&logits)));
    });
    let mask = vec![u32::MAX; vocab / 32];
    let mut scratch = logits.clone();
    time("mask", &mut || {
        apply_mask(std::hint::black_box(&mut scratch), &mask).unwrap();
    });
    time("fill_weights", &mut || {
        std::hint::black_box(sampler.fill_weights(&logits, ext.max, 1.0));
    });
    time("top_k 5", &mut || {
        std::hint::black_box(top_k(std::hint::black_box(&logits), 5));
    });
    time("top_k 20", &mut || {
        std::hint::black_box(top_k(std::hint::black_box(&logits), 20));
    });
    let total = sampler.fill_weights(&logits, ext.max, 1.0);
    let weights = sampler.weights.clone();
    time("nucleus (flat)", &mut || {
        sampler.weights.copy_from_slice(&weights);
        std::hint::black_box(sampler.restrict_to_nucleus(&logits, &ext, 1.0, total, 0.9));
    });
    let mut peaked = logits.clone();
    peak(&mut peaked, 3);
    let peaked_ext = extremes(&peaked).unwrap();
    let peaked_total = sampler.fill_weights(&peaked, peaked_ext.max, 1.0);
    let peaked_weights = sampler.weights.clone();
    time("nucleus (peaked)", &mut || {
        sampler.weights.copy_from_slice(&peaked_weights);
        std::hint::black_box(sampler.restrict_to_nucleus(
            &peaked,
            &peaked_ext,
            1.0,
            peaked_total,
            0.9,
        ));
    });
    time("weights copy", &mut || {
        sampler.weights.copy_from_slice(&peaked_weights);
    });
    time("draw", &mut || {
        std::hint::black_box(sampler.draw(total, 0));
    });
}

/// `cargo test --release -- --ignored --nocapture sampler_timing`
#[test]
#[ignore]
fn sampler_timing() {
    for (vocab, peaked) in [
        (49_152usize, false),
        (49_152, true),
        (151_936, false),
        (151_936, true),
    ] {
        let steps: Vec<Vec<f32>> = (0..64)
            .map(|s| {
                let mut logits = pseudo_logits(vocab, s, 4.0);
                if peaked {
                    peak(&mut logits, s);
                }
                logits
            })
            .collect();
        let shape = if peaked { "peaked" } else { "flat" };
        let mask = vec![u32::MAX; vocab.div_ceil(32)];
        let variants = [
            ("greedy, no logprobs", 0.0, 1.0, false, 0),
            ("greedy + 5 top logprobs", 0.0, 1.0, true, 5),
            ("T=0.8, top_p=1", 0.8, 1.0, false, 0),
            ("T=0.8, top_p=0.95 + 20 top", 0.8, 0.95, true, 20),
            ("T=1.5, top_p=0.9", 1.5, 0.9, false, 0),
        ];
        for (name, temperature, top_p, logprobs, top_logprobs) in variants {
            let mut sampler = Sampler::new(SamplingConfig {
                presence_penalty: 0.5,
                frequency_penalty: 0.5,
                logit_bias: vec![(5, 1.0), (17, -100.0)],
                logprobs,
                top_logprobs,
                ..config(temperature, top_p, 9)
            });
            let rounds = 500;
            let mut scratch = vec![0.0f32; vocab];
            let start = std::time::Instant::now();
            let cpu_start = thread_cpu_ns();
            for round in 0..rounds {
                scratch.copy_from_slice(&steps[round % steps.len()]);
                sampler.sample(&mut scratch, Some(&mask)).unwrap();
            }
            let wall = start.elapsed() / rounds as u32;
            let cpu = thread_cpu_ns()
                .zip(cpu_start)
                .map(|(end, start)| std::time::Duration::from_nanos((end - start) / rounds as u64));
            println!("vocab {vocab:>6} {shape:<6} {name:<28} cpu {cpu:?}, wall {wall:?} per call");
        }
    }
}
