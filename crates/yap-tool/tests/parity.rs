//! Parity with `transformers`: tiny random models of each architecture, reference logits from
//! `tools/tool-model/make_parity_fixtures.py` (committed under tests/fixtures/).
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

use std::path::PathBuf;

use serde_json::Value;
use yap_tool::SequenceClassifier;

const TOLERANCE: f32 = 1e-4;

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(arch)
}

fn check(arch: &str, expected_class: &str) {
    let dir = fixture(arch);
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    assert_eq!(reference["architecture"], expected_class);
    let model = SequenceClassifier::load(&dir).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let ids: Vec<Vec<u32>> = reference["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["attention_mask"].as_array().unwrap())
        .map(|(ids, mask)| {
            ids.as_array()
                .unwrap()
                .iter()
                .zip(mask.as_array().unwrap())
                .filter(|(_, m)| m.as_u64() == Some(1))
                .map(|(i, _)| i.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    // The Rust tokenizer makes the ids the HF tokenizer made.
    for (text, want) in reference["texts"].as_array().unwrap().iter().zip(&ids) {
        let enc = tokenizer.encode(text.as_str().unwrap(), true).unwrap();
        assert_eq!(
            enc.get_ids(),
            want.as_slice(),
            "{arch}: tokenizer ids for {text}"
        );
    }
    let want: Vec<Vec<f32>> = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let batch = model.logits(&ids).unwrap();
    let mut worst = 0f32;
    for (i, (got, exp)) in batch.iter().zip(&want).enumerate() {
        // Alone (no padding) and in the padded batch, the same logits.
        let alone = model
            .logits(std::slice::from_ref(&ids[i]))
            .unwrap()
            .remove(0);
        for ((g, a), e) in got.iter().zip(&alone).zip(exp) {
            worst = worst.max((g - e).abs()).max((a - e).abs());
        }
    }
    println!("{arch}: max |Δlogit| = {worst:e} over {} texts", want.len());
    assert!(
        worst < TOLERANCE,
        "{arch}: max abs difference {worst} ≥ {TOLERANCE}"
    );
}

#[test]
fn bert_matches_transformers() {
    check("bert", "BertForSequenceClassification");
}

#[test]
fn distilbert_matches_transformers() {
    check("distilbert", "DistilBertForSequenceClassification");
}

#[test]
fn roberta_matches_transformers() {
    check("roberta", "RobertaForSequenceClassification");
}

#[test]
fn xlm_roberta_matches_transformers() {
    check("xlm-roberta", "XLMRobertaForSequenceClassification");
}

#[test]
fn longformer_matches_transformers() {
    check("longformer", "LongformerForSequenceClassification");
}

#[test]
fn modernbert_matches_transformers() {
    check("modernbert", "ModernBertForSequenceClassification");
}

/// Pair inputs (earlier turns + utterance): `ToolModel::encode` makes exactly the ids and type
/// ids that `tools/tool-model/common.py` made (both truncations included), and the logits with
/// segment ids match `transformers`.
#[test]
fn bert_pair_inputs_match_the_training_encoding_and_transformers() {
    let dir = fixture("bert");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let pair = &reference["pair"];
    let model = yap_tool::ToolModel::load(&dir, None).unwrap();
    assert_eq!(
        model.max_tokens() as u64,
        pair["max_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        model.history_turns().map(|n| n as u64),
        pair["history_turns"].as_u64()
    );
    let ids_of = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut encoded = Vec::new();
    let mut want = Vec::new();
    for case in pair["cases"].as_array().unwrap() {
        let input = yap_tool::ToolInput {
            history: case["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_owned())
                .collect(),
            utterance: case["utterance"].as_str().unwrap().to_owned(),
        };
        let enc = model.encode(&input).unwrap();
        assert_eq!(enc.ids, ids_of(&case["input_ids"]), "ids of {input:?}");
        assert_eq!(
            enc.type_ids,
            ids_of(&case["token_type_ids"]),
            "type ids of {input:?}"
        );
        encoded.push(enc);
        want.push(
            case["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect::<Vec<f32>>(),
        );
    }
    // Segment ids matter: the same ids read as one segment give other logits.
    let batch = model.logits(&encoded).unwrap();
    let mut worst = 0f32;
    for (i, (got, exp)) in batch.iter().zip(&want).enumerate() {
        let alone = model
            .logits(std::slice::from_ref(&encoded[i]))
            .unwrap()
            .remove(0);
        for ((g, a), e) in got.iter().zip(&alone).zip(exp) {
            worst = worst.max((g - e).abs()).max((a - e).abs());
        }
    }
    println!(
        "bert pairs: max |Δlogit| = {worst:e} over {} inputs",
        want.len()
    );
    assert!(worst < TOLERANCE, "pairs: max abs difference {worst}");
    let untyped = model
        .classifier()
        .logits(&encoded.iter().map(|e| e.ids.clone()).collect::<Vec<_>>())
        .unwrap();
    let moved = untyped
        .iter()
        .zip(&want)
        .flat_map(|(g, e)| g.iter().zip(e).map(|(a, b)| (a - b).abs()))
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "type ids made no difference ({moved})");
}
