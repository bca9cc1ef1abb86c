//! Tests of the llama.cpp decoder against the SmolLM2 test model.

use super::*;

pub(crate) const SMOLLM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf");

fn load() -> LlamaDecoder {
    let params = DecoderParams { context_length: 256, kv_cells: 1024, threads: 2, gpu_layers: 0 };
    LlamaDecoder::load(Path::new(SMOLLM), &params).expect("run `make models-test` first")
}

#[cfg(not(any(feature = "cuda", feature = "metal")))]
#[test]
fn gpu_layers_without_a_gpu_build_say_which_build_has_them() {
    let params = DecoderParams { context_length: 256, kv_cells: 1024, threads: 2, gpu_layers: 8 };
    let err = LlamaDecoder::load(Path::new(SMOLLM), &params).err().expect("a CPU build offloads nothing");
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("--features cuda") && err.to_string().contains("gpu_layers = 8"), "{err}");
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.05) && argmax(a) == argmax(b)
}

const A: [u32; 10] = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 30];
const B: [u32; 6] = [1, 4093, 198, 19556, 2, 3];

/// Two sequences batched together give the logits each gives alone, prefill and decode.
#[test]
fn batched_forward_matches_one_at_a_time() {
    let mut decoder = load();
    let mut alone = Vec::new();
    for prompt in [&A[..], &B[..]] {
        let mut cache = decoder.new_cache();
        let prefill = decoder.forward(&mut [SequenceInput { cache: &mut cache, tokens: prompt }]).unwrap();
        let step = decoder.forward(&mut [SequenceInput { cache: &mut cache, tokens: &[42] }]).unwrap();
        alone.push((prefill.into_iter().next().unwrap(), step.into_iter().next().unwrap()));
    }
    let (mut ca, mut cb) = (decoder.new_cache(), decoder.new_cache());
    let prefill = decoder
        .forward(&mut [SequenceInput { cache: &mut ca, tokens: &A }, SequenceInput { cache: &mut cb, tokens: &B }])
        .unwrap();
    let step = decoder
        .forward(&mut [
            SequenceInput { cache: &mut ca, tokens: &[42] },
            SequenceInput { cache: &mut cb, tokens: &[42] },
        ])
        .unwrap();
    for (i, (p, s)) in alone.iter().enumerate() {
        assert!(close(&prefill[i], p), "prefill {i}");
        assert!(close(&step[i], s), "step {i}");
    }
    assert_eq!((ca.len(), cb.len()), (A.len() + 1, B.len() + 1));
}

/// A truncated snapshot shared by two continuations: each continues exactly like a fresh
/// prefill, and neither disturbs the other or the snapshot.
#[test]
fn shared_snapshots_continue_like_fresh_prefill() {
    let mut decoder = load();
    let mut full = decoder.new_cache();
    let fresh = decoder.forward(&mut [SequenceInput { cache: &mut full, tokens: &A }]).unwrap();
    let prefix = full.truncated(6).unwrap();
    drop(full);
    let (mut x, mut y) = (prefix.clone(), prefix.clone());
    let rx = decoder.forward(&mut [SequenceInput { cache: &mut x, tokens: &A[6..] }]).unwrap();
    let ry = decoder.forward(&mut [SequenceInput { cache: &mut y, tokens: &B[1..] }]).unwrap();
    assert!(close(&rx[0], &fresh[0]));
    let mut z = decoder.new_cache();
    let expected = [&A[..6], &B[1..]].concat();
    let rz = decoder.forward(&mut [SequenceInput { cache: &mut z, tokens: &expected }]).unwrap();
    assert!(close(&ry[0], &rz[0]));
    assert_eq!(prefix.len(), 6);
}

/// Rows after every fed token (a drafted run) are the logits single steps give, next to
/// another input that asks for its last row only.
#[test]
fn rows_after_every_token_match_single_steps() {
    let mut decoder = load();
    let mut stepped = decoder.new_cache();
    decoder.forward(&mut [SequenceInput { cache: &mut stepped, tokens: &A[..6] }]).unwrap();
    let steps: Vec<Vec<f32>> = A[6..]
        .iter()
        .map(|&t| decoder.forward(&mut [SequenceInput { cache: &mut stepped, tokens: &[t] }]).unwrap().remove(0))
        .collect();
    let (mut run, mut other) = (decoder.new_cache(), decoder.new_cache());
    decoder.forward(&mut [SequenceInput { cache: &mut run, tokens: &A[..5] }]).unwrap();
    let rows = decoder
        .forward_rows(
            &mut [SequenceInput { cache: &mut run, tokens: &A[5..] }, SequenceInput { cache: &mut other, tokens: &B }],
            &[steps.len(), 1],
            false,
        )
        .unwrap();
    assert_eq!((rows[0].len(), rows[1].len(), run.len()), (steps.len(), 1, A.len()));
    for (i, (row, step)) in rows[0].iter().zip(&steps).enumerate() {
        assert!(close(&row.clone().full().unwrap(), step), "row {i}");
    }
}

/// Hidden states scored by the output head give llama.cpp's own logits (every token of
/// the vocabulary, rows after several tokens of two sequences), and the KV cache continues
/// as after a full forward.
#[test]
fn hidden_states_give_the_logits_of_a_full_forward() {
    let mut decoder = load();
    assert!(decoder.has_head(), "SmolLM2 (llama) has a plain output layer");
    let all: Vec<u32> = (0..decoder.vocab as u32).collect();
    let mut full = Vec::new();
    let mut hidden = Vec::new();
    for skip in [false, true] {
        let (mut a, mut b) = (decoder.new_cache(), decoder.new_cache());
        let mut inputs = [SequenceInput { cache: &mut a, tokens: &A }, SequenceInput { cache: &mut b, tokens: &B }];
        let rows = decoder.forward_rows(&mut inputs, &[3, 1], skip).unwrap();
        let next = decoder.forward(&mut [SequenceInput { cache: &mut a, tokens: &[42] }]).unwrap();
        let rows: Vec<Vec<f32>> = rows.into_iter().flatten().map(|r| r.of(&all)).chain(next).collect();
        if skip { &mut hidden } else { &mut full }.extend(rows);
    }
    assert_eq!(hidden.len(), 5);
    for (i, (h, f)) in hidden.iter().zip(&full).enumerate() {
        let worst = h.iter().zip(f).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-3 && argmax(h) == argmax(f), "row {i}: off by {worst}");
    }
}

/// Dropped caches give their ids back: far more sequences than ids can come and go.
#[test]
fn sequence_ids_are_recycled() {
    let mut decoder = load();
    for _ in 0..2 * MAX_SEQUENCES {
        let mut cache = decoder.new_cache();
        decoder.forward(&mut [SequenceInput { cache: &mut cache, tokens: &B }]).unwrap();
    }
    let mut long = decoder.new_cache();
    let too_long = vec![3u32; 300];
    assert!(matches!(
        decoder.forward(&mut [SequenceInput { cache: &mut long, tokens: &too_long }]),
        Err(Error::PromptTooLong { .. })
    ));
}
