//! A deliberately naive Llama forward pass in f64 over plain vectors: no
//! candle, no batching, no cache. It shares nothing with the engine but the
//! weight files, so agreeing with it checks the engine's arithmetic.

use std::collections::HashMap;
use std::path::Path;

pub struct Reference {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    config: serde_json::Value,
}

fn rms_norm(x: &[f64], weight: &[f64], eps: f64) -> Vec<f64> {
    let mean = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (mean + eps).sqrt();
    x.iter().zip(weight).map(|(v, w)| v * scale * w).collect()
}

impl Reference {
    pub fn load(dir: &Path) -> Reference {
        let bytes = std::fs::read(dir.join("model.safetensors")).expect("weights");
        let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                    .collect();
                (name, (view.shape().to_vec(), values))
            })
            .collect();
        let config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        Reference { tensors, config }
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
    }

    fn size(&self, key: &str) -> usize {
        self.config[key].as_u64().unwrap() as usize
    }

    /// `W·x` for a `[out, in]` weight.
    fn linear(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let (shape, w) = self.get(name);
        let (out, input) = (shape[0], shape[1]);
        (0..out)
            .map(|o| (0..input).map(|i| w[o * input + i] * x[i]).sum())
            .collect()
    }

    /// Next-token logits after `tokens`.
    pub fn logits(&self, tokens: &[u32]) -> Vec<f64> {
        let hidden = self.size("hidden_size");
        let heads = self.size("num_attention_heads");
        let kv_heads = self.size("num_key_value_heads");
        let layers = self.size("num_hidden_layers");
        let head_dim = hidden / heads;
        let eps = self.config["rms_norm_eps"].as_f64().unwrap();
        let theta = self.config["rope_theta"].as_f64().unwrap();
        let (_, embed) = self.get("model.embed_tokens.weight");
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| embed[t as usize * hidden..(t as usize + 1) * hidden].to_vec())
            .collect();
        let rope = |v: &mut [f64], position: usize| {
            let half = head_dim / 2;
            for i in 0..half {
                let angle = position as f64 / theta.powf((2 * i) as f64 / head_dim as f64);
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * angle.cos() - b * angle.sin();
                v[i + half] = b * angle.cos() + a * angle.sin();
            }
        };
        for layer in 0..layers {
            let name = |suffix: &str| format!("model.layers.{layer}.{suffix}");
            let (_, norm) = self.get(&name("input_layernorm.weight"));
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (position, x) in xs.iter().enumerate() {
                let h = rms_norm(x, norm, eps);
                let mut q = self.linear(&name("self_attn.q_proj.weight"), &h);
                let mut k = self.linear(&name("self_attn.k_proj.weight"), &h);
                for head in 0..heads {
                    rope(&mut q[head * head_dim..(head + 1) * head_dim], position);
                }
                for head in 0..kv_heads {
                    rope(&mut k[head * head_dim..(head + 1) * head_dim], position);
                }
                qs.push(q);
                ks.push(k);
                vs.push(self.linear(&name("self_attn.v_proj.weight"), &h));
            }
            let group = heads / kv_heads;
            for position in 0..xs.len() {
                let mut attended = vec![0.0; hidden];
                for head in 0..heads {
                    let kv = head / group;
                    let q = &qs[position][head * head_dim..(head + 1) * head_dim];
                    let scores: Vec<f64> = (0..=position)
                        .map(|j| {
                            let k = &ks[j][kv * head_dim..(kv + 1) * head_dim];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>()
                                / (head_dim as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for (j, weight) in weights.iter().enumerate() {
                        let v = &vs[j][kv * head_dim..(kv + 1) * head_dim];
                        for d in 0..head_dim {
                            attended[head * head_dim + d] += weight / total * v[d];
                        }
                    }
                }
                let o = self.linear(&name("self_attn.o_proj.weight"), &attended);
                for (x, o) in xs[position].iter_mut().zip(o) {
                    *x += o;
                }
            }
            let (_, post) = self.get(&name("post_attention_layernorm.weight"));
            for x in xs.iter_mut() {
                let h = rms_norm(x, post, eps);
                let gate = self.linear(&name("mlp.gate_proj.weight"), &h);
                let up = self.linear(&name("mlp.up_proj.weight"), &h);
                let act: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let down = self.linear(&name("mlp.down_proj.weight"), &act);
                for (x, d) in x.iter_mut().zip(down) {
                    *x += d;
                }
            }
        }
        let (_, norm) = self.get("model.norm.weight");
        let last = rms_norm(xs.last().expect("a token"), norm, eps);
        let head = if self.tensors.contains_key("lm_head.weight") {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        self.linear(head, &last)
    }
}

/// `log_softmax` of logits.
pub fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    logits.iter().map(|l| l - max - total.ln()).collect()
}
