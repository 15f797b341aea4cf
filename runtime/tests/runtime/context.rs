//! Neighbour context (`--context`): log-odds averaged over the slide grid, and the threshold
//! chosen for the context it had.

use super::{runtime, small_synth, stdout_ok};
use crate::common::{export_run, model};

/// `--context`: each patch's probability is the weighted mean, in log-odds, of its own and its
/// grid neighbours' (recomputed here from the run without context), the others keep theirs, and
/// the report says how many had neighbours. A weight in the model's metadata applies it by
/// default (`--context=false` turns it off); one out of range is refused.
#[test]
fn neighbour_context_averages_log_odds_over_the_slide_grid() {
    use exporter::onnx_proto::{ModelProto, StringStringEntryProto};
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    let (d, m) = (data.to_str().unwrap(), onnx.to_str().unwrap());
    let eval_with = |m: &str, extra: &[&str], name: &str| {
        let preds = tmp.path().join(format!("{name}.csv"));
        let json = tmp.path().join(format!("{name}.json"));
        let mut args = vec!["eval", d, "--model", m, "--ep", "cpu", "--predictions"];
        args.extend([preds.to_str().unwrap(), "--json", json.to_str().unwrap()]);
        args.extend(extra);
        let out = stdout_ok(&runtime(&args));
        let rows: Vec<(String, u32, u32, f64)> = csv::Reader::from_path(&preds)
            .unwrap()
            .records()
            .map(|r| {
                let r = r.unwrap();
                // The call follows the probability written (the one with context, if any).
                let p: f64 = r[5].parse().unwrap();
                assert_eq!(&r[6], if p >= 0.5 { "1" } else { "0" }, "{r:?}");
                (
                    r[1].to_string(),
                    r[2].parse().unwrap(),
                    r[3].parse().unwrap(),
                    r[5].parse().unwrap(),
                )
            })
            .collect();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (out, rows, json)
    };
    let eval = |extra: &[&str], name: &str| eval_with(m, extra, name);
    let (_, plain, json) = eval(&[], "plain");
    assert!(json["run"]["context"].is_null());
    let (out, ctx, json) = eval(&["--context", "--context-weight", "0.75"], "ctx");
    assert_eq!(plain.len(), ctx.len());
    let logit = |p: f64| (p.clamp(1e-6, 1.0 - 1e-6) / (1.0 - p.clamp(1e-6, 1.0 - 1e-6))).ln();
    let mut with_neighbours = 0;
    let mut moved = 0;
    for (i, (patient, x, y, p)) in plain.iter().enumerate() {
        assert_eq!(
            (patient, x, y),
            (&ctx[i].0, &ctx[i].1, &ctx[i].2),
            "same order"
        );
        let near: Vec<f64> = plain
            .iter()
            .filter(|o| &o.0 == patient && (o.1, o.2) != (*x, *y))
            .filter(|o| o.1.abs_diff(*x) <= 50 && o.2.abs_diff(*y) <= 50)
            .map(|o| logit(o.3))
            .collect();
        let want = if near.is_empty() {
            *p
        } else {
            with_neighbours += 1;
            let z =
                (logit(*p) + 0.75 * near.iter().sum::<f64>()) / (1.0 + 0.75 * near.len() as f64);
            1.0 / (1.0 + (-z).exp())
        };
        assert!(
            (ctx[i].3 - want).abs() < 1e-4,
            "{patient} ({x}, {y}): {} != {want}",
            ctx[i].3
        );
        moved += usize::from((ctx[i].3 - p).abs() > 1e-6);
    }
    assert!(
        with_neighbours > 0 && moved > 0,
        "the synthetic slides have neighbours"
    );
    assert_eq!(json["run"]["context"]["with_neighbours"], with_neighbours);
    assert_eq!(json["run"]["context"]["weight"], 0.75);
    assert!(
        out.contains(&format!(
            "neighbour context (--context-weight): each patch's log-odds averaged with its grid \
             neighbours' at weight 0.75 ({with_neighbours} of {} patches had neighbours)",
            plain.len()
        )),
        "{out}"
    );
    // --context alone: the default weight, 0.5.
    let (out, half, _) = eval(&["--context"], "half");
    assert!(
        out.contains("(--context): each patch") && out.contains("weight 0.5 ("),
        "{out}"
    );
    assert_ne!(half, ctx);
    // The weight in (0, 4] only, and not with --context=false.
    for (bad, why) in [
        (
            &["--context=false", "--context-weight", "0.5"][..],
            "drop one of them",
        ),
        (&["--context", "--context-weight", "0"], "--context-weight"),
        (&["--context-weight", "4.01"], "--context-weight"),
    ] {
        let mut args = vec!["eval", d, "--model", m];
        args.extend(bad);
        let o = runtime(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    // A model carrying a weight (as the exporter writes the trainer's eval.context) applies it
    // unless told otherwise.
    let with_weight = |value: &str| {
        let mut proto = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
        proto.metadata_props.push(StringStringEntryProto {
            key: Some(contract::keys::CONTEXT.into()),
            value: Some(value.into()),
        });
        let path = tmp.path().join(format!("context-{value}.onnx"));
        std::fs::write(&path, proto.encode_to_vec()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let own = with_weight("0.75");
    let (out, rows, _) = eval_with(&own, &[], "own");
    assert_eq!(rows, ctx);
    assert!(
        out.contains("neighbour context (from the model's metadata)"),
        "{out}"
    );
    // --context keeps the model's weight.
    let (out, rows, _) = eval_with(&own, &["--context"], "own-on");
    assert_eq!(rows, ctx);
    assert!(
        out.contains("neighbour context (from the model's metadata)"),
        "{out}"
    );
    let (out, rows, _) = eval_with(&own, &["--context=false"], "own-off");
    assert_eq!(rows, plain);
    assert!(!out.contains("neighbour context"), "{out}");
    let (_, rows, _) = eval_with(&own, &["--context-weight", "0.5"], "own-half");
    assert_eq!(rows, half);
    let bad = with_weight("nan");
    let o = runtime(&["eval", d, "--model", &bad, "--ep", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("context.weight") && err.contains("--context=false to override it"),
        "{err}"
    );
    let o = runtime(&["eval", d, "--model", &bad, "--ep", "cpu", "--context"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "--context does not override a bad weight"
    );
    let (_, rows, _) = eval_with(&bad, &["--context=false"], "bad-off");
    assert_eq!(rows, plain);
}

/// A threshold chosen on the model's predictions holds for the neighbour context they had
/// (metadata `threshold.context`, as the exporter writes it): a run with other context falls back
/// to 0.5 and says why; `--threshold` still sets one, a fixed threshold ("any") holds for any
/// context, and a model without the key is taken as chosen for its own context.
#[test]
fn a_threshold_chosen_for_one_context_is_not_used_with_another() {
    use contract::keys;
    use exporter::onnx_proto::{ModelProto, StringStringEntryProto};
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let onnx = model(tmp.path());
    let data = small_synth(tmp.path());
    let d = data.to_str().unwrap();
    let with_meta = |name: &str, pairs: &[(&str, &str)]| {
        let mut proto = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
        proto.metadata_props.retain(|e| {
            !matches!(e.key.as_deref(), Some(k) if k.starts_with("threshold") || k == keys::CONTEXT)
        });
        for (k, v) in pairs {
            proto.metadata_props.push(StringStringEntryProto {
                key: Some(k.to_string()),
                value: Some(v.to_string()),
            });
        }
        let path = tmp.path().join(format!("{name}.onnx"));
        std::fs::write(&path, proto.encode_to_vec()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let header = |m: &str, extra: &[&str]| {
        let mut args = vec!["eval", d, "--model", m, "--ep", "cpu"];
        args.extend(extra);
        let out = stdout_ok(&runtime(&args));
        out.lines()
            .find(|l| l.starts_with("threshold "))
            .unwrap_or_else(|| panic!("no threshold line:\n{out}"))
            .to_string()
    };
    let threshold = [
        (keys::THRESHOLD, "0.73"),
        (keys::THRESHOLD_SOURCE, "trainer: max BAC"),
    ];
    let chosen_with = with_meta(
        "chosen-with",
        &[
            threshold[0],
            threshold[1],
            (keys::THRESHOLD_CONTEXT, "0.75"),
            (keys::CONTEXT, "0.75"),
        ],
    );
    let from_model = "threshold 0.73 (from the model's metadata; trainer: max BAC)";
    assert!(header(&chosen_with, &[]).starts_with(from_model));
    let not_without = "threshold 0.5 (default; the model's threshold 0.73 (trainer: max BAC) was \
                       chosen with neighbour context at weight 0.75, and this run evaluates \
                       without neighbour context: pass --threshold";
    let off = header(&chosen_with, &["--context=false"]);
    assert!(off.starts_with(not_without), "{off}");
    let other = header(&chosen_with, &["--context-weight", "0.5"]);
    assert!(
        other.starts_with("threshold 0.5 (default;")
            && other.contains("this run evaluates with neighbour context at weight 0.5:"),
        "{other}"
    );
    let given = header(&chosen_with, &["--context=false", "--threshold", "0.2"]);
    assert!(given.starts_with("threshold 0.2 (--threshold)"), "{given}");
    // Chosen without context: it holds for a plain run, not for --context.
    let chosen_without = with_meta(
        "chosen-without",
        &[
            threshold[0],
            threshold[1],
            (keys::THRESHOLD_CONTEXT, "none"),
        ],
    );
    assert!(header(&chosen_without, &[]).starts_with(from_model));
    let on = header(&chosen_without, &["--context"]);
    assert!(
        on.contains(
            "chosen without neighbour context, and this run evaluates with neighbour context \
             at weight 0.5"
        ),
        "{on}"
    );
    // Fixed ("any"): it holds whatever the context. Without the key (a model exported before
    // it): chosen for the model's own context.
    let fixed = with_meta(
        "fixed",
        &[
            threshold[0],
            threshold[1],
            (keys::THRESHOLD_CONTEXT, "any"),
            (keys::CONTEXT, "0.75"),
        ],
    );
    let legacy = with_meta(
        "legacy",
        &[threshold[0], threshold[1], (keys::CONTEXT, "0.75")],
    );
    for extra in [&[][..], &["--context=false"], &["--context-weight", "2"]] {
        assert!(header(&fixed, extra).starts_with(from_model), "{extra:?}");
    }
    assert!(header(&legacy, &[]).starts_with(from_model));
    let off = header(&legacy, &["--context=false"]);
    assert!(off.starts_with(not_without), "{off}");
    // A value that is none of those is refused, naming the key and the override.
    let bad = with_meta("bad", &[threshold[0], (keys::THRESHOLD_CONTEXT, "often")]);
    let o = runtime(&["eval", d, "--model", &bad, "--ep", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("threshold.context = \"often\"") && err.contains("pass --threshold"),
        "{err}"
    );
    let given = header(&bad, &["--threshold", "0.3"]);
    assert!(given.starts_with("threshold 0.3 (--threshold)"), "{given}");
    // Through the exporter: a run whose report chose its threshold with context 0.75.
    let run = tmp.path().join("context-run");
    trainer::checkpoint::write_random_run(&run, &models::CancerNetConfig::default(), 11).unwrap();
    std::fs::write(
        run.join(trainer::checkpoint::CONFIG_FILE),
        "eval:\n  context: 0.75\n",
    )
    .unwrap();
    std::fs::write(
        run.join(trainer::checkpoint::THRESHOLD_FILE),
        r#"{"threshold": 0.73, "source": "max BAC", "epoch": 0, "context": 0.75}"#,
    )
    .unwrap();
    let exported = tmp.path().join("exported.onnx");
    export_run(&run, &exported, false);
    let exported = exported.to_str().unwrap();
    assert!(header(exported, &[]).starts_with(from_model));
    let off = header(exported, &["--context=false"]);
    assert!(off.starts_with(not_without), "{off}");
}
