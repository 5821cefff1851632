//! Latency datasets, predictors and latency-constrained search (HAT).

mod common;

use candle_core::Device;
use common::{space, supernet, with_fmnist_evaluator};
use vitnas::latency::{self, dataset, fit, Machine, Predictor, Protocol};
use vitnas::search;
use vitnas::search::config::SearchConfig;

fn tmp(tag: &str) -> std::path::PathBuf {
    common::scratch(&format!("latency-{tag}"))
}

fn quick(n: usize) -> dataset::MeasureOptions {
    dataset::MeasureOptions {
        n,
        batch: 1,
        threads: 1,
        seed: 4,
        protocol: Protocol {
            warmup: 1,
            runs: 3,
            trim: 0.1,
        },
    }
}

fn data_rows(csv: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("index,"))
        .map(String::from)
        .collect()
}

/// A predictor fitted on a real (quick) measurement of fmnist-tiny.
fn predictor(dir: &std::path::Path) -> (Predictor, std::path::PathBuf) {
    let s = space("fmnist-tiny");
    let csv = dir.join("lat.csv");
    dataset::measure(&s, &quick(60), &csv, |_, _| {}).unwrap();
    let d = dataset::read(&csv).unwrap();
    let f = fit::fit(&d.space, &d.samples, 0.2, 0, 30, "test").unwrap();
    let p = Predictor::from_fit(&d, &f);
    let path = dir.join("predictor.json");
    p.save(&path).unwrap();
    (Predictor::load(&path).unwrap(), path)
}

#[test]
fn a_measurement_resumes_after_a_kill_and_refuses_other_settings() {
    let s = space("fmnist-tiny");
    let dir = tmp("resume");
    let csv = dir.join("lat.csv");
    assert_eq!(
        dataset::measure(&s, &quick(12), &csv, |_, _| {}).unwrap(),
        12
    );
    let full = data_rows(&csv);
    // A kill: the last row half written, the one before lost.
    let text = std::fs::read_to_string(&csv).unwrap();
    let cut = text.trim_end().rfind('\n').unwrap();
    let cut = text[..cut].rfind('\n').unwrap() + 1;
    std::fs::write(&csv, format!("{}{}", &text[..cut], "11,0 1 2")).unwrap();
    assert_eq!(data_rows(&csv).len(), 11); // 10 whole rows + the partial one
    assert_eq!(
        dataset::measure(&s, &quick(12), &csv, |_, _| {}).unwrap(),
        2
    );
    let again = data_rows(&csv);
    assert_eq!(again.len(), 12);
    let idx = |rows: &[String]| {
        let mut v: Vec<String> = rows
            .iter()
            .map(|r| r.split(',').take(2).collect::<Vec<_>>().join(","))
            .collect();
        v.sort();
        v
    };
    assert_eq!(idx(&full), idx(&again), "the same architectures, by index");
    let mut other = quick(12);
    other.batch = 2;
    let e = dataset::measure(&s, &other, &csv, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("lat.csv") && e.contains("batch"), "{e}");
    let e = dataset::measure(&space("autoformer-tiny"), &quick(12), &csv, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("space"), "{e}");
}

#[test]
fn fitting_needs_enough_rows_and_a_predictor_is_refused_for_another_space() {
    let s = space("fmnist-tiny");
    let dir = tmp("fit");
    let csv = dir.join("few.csv");
    dataset::measure(&s, &quick(20), &csv, |_, _| {}).unwrap();
    let d = dataset::read(&csv).unwrap();
    let e = fit::fit(&d.space, &d.samples, 0.2, 0, 10, "few.csv")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("20 measured") && e.contains(&fit::MIN_SAMPLES.to_string()),
        "{e}"
    );

    let (p, path) = predictor(&dir);
    // Both models were fitted and scored on held-out rows.
    assert_eq!(p.heldout.len(), 2);
    assert!(p
        .heldout
        .values()
        .all(|e| e.n == 12 && e.mean_rel.is_finite()));
    // Predictions grow with the work.
    assert!(p.predict(&s, &s.largest()) > p.predict(&s, &s.smallest()));
    // Same space: accepted, no warning on this machine.
    assert!(p.check(&path, &s, &Machine::current(1)).unwrap().is_empty());
    // Another machine setting: a warning naming it.
    let w = p.check(&path, &s, &Machine::current(7)).unwrap();
    assert!(w.len() == 1 && w[0].contains("threads"), "{w:?}");
    // Another space: refused, naming both.
    let e = p
        .check(&path, &space("autoformer-tiny"), &Machine::current(1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fmnist-tiny") && e.contains("autoformer-tiny"),
        "{e}"
    );
    // A budget below the smallest subnet's prediction: refused with the range.
    let e = latency::check_budget(&p, &path, &s, 1e-6)
        .unwrap_err()
        .to_string();
    assert!(e.contains("predictions range from"), "{e}");
}

#[test]
fn a_latency_constrained_search_predicts_and_times_no_candidate() {
    let s = space("fmnist-tiny");
    let dir = tmp("search");
    let (p, path) = predictor(&dir);
    let (net, _vm) = supernet(&s, 5);
    let budget = 0.5 * (p.predict(&s, &s.smallest()) + p.predict(&s, &s.largest()));
    let mut cfg = SearchConfig {
        population: 6,
        generations: 2,
        parents: 2,
        mutations: 2,
        crossovers: 2,
        val_subset: 32,
        eval_batch_size: 32,
        seed: 3,
        ..SearchConfig::default()
    };
    cfg.constraints.latency_ms_max = Some(budget);
    cfg.constraints.latency_predictor = Some(path);
    let state = with_fmnist_evaluator(&net, 32, Some(&p), |ev| {
        search::run(&s, cfg, ev, &dir.join("out"), false, false)
    })
    .unwrap();
    assert!(!state.records.is_empty());
    for r in &state.records {
        assert_eq!(r.latency_ms, None, "no candidate is timed");
        let pred = r
            .predicted_latency_ms
            .expect("every candidate is predicted");
        assert!(pred <= budget);
        assert_eq!(pred, p.predict(&s, &r.arch));
    }
}

#[test]
fn empty_and_malformed_datasets_are_clear_errors() {
    let s = space("fmnist-tiny");
    let dir = tmp("malformed");
    let empty = dir.join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let e = dataset::read(&empty).err().unwrap().to_string();
    assert!(
        e.contains("empty.csv") && e.contains("not a latency dataset"),
        "{e}"
    );
    let csv = dir.join("bad.csv");
    dataset::measure(&s, &quick(5), &csv, |_, _| {}).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    for (bad, want) in [
        ("5,0 1,64\n", "line"),
        ("5,0 1 x,64,4,2 2 2 2,2 2 2 2,1,1,0.1,0.0,0.1\n", "genes"),
        (
            "5,0 0 0 0 0 0 0 0 0 0 0 0 0 0,64,4,2 2 2 2,2 2 2 2,1,1,-3,0.0,0.1\n",
            "mean_ms",
        ),
    ] {
        std::fs::write(&csv, format!("{text}{bad}")).unwrap();
        let e = dataset::read(&csv).err().unwrap().to_string();
        assert!(e.contains("bad.csv") && e.contains(want), "{e}");
    }
}

#[test]
fn a_text_space_is_measured_at_its_stated_length_and_fitted() {
    let dir = tmp("text");
    let s = common::text_space(
        "tiny-text",
        "vocab_size = 100\nmax_position_embeddings = 32\nnum_classes = 2\nseq_len = 24",
        "embed_dim = [16, 32]\ndepth = [1, 2, 3]\nnum_heads = [2, 4]\nmlp_dim = [16, 64]",
    );
    let csv = dir.join("lat.csv");
    assert_eq!(
        dataset::measure(&s, &quick(60), &csv, |_, _| {}).unwrap(),
        60
    );
    let d = dataset::read(&csv).unwrap();
    assert_eq!(d.samples.len(), 60);
    // The MLP column holds the widths of a text space.
    let row = &data_rows(&csv)[0];
    let widths = row.split(',').nth(5).unwrap();
    assert!(widths.split(' ').all(|w| w == "16" || w == "64"), "{row}");
    let f = fit::fit(&d.space, &d.samples, 0.2, 0, 30, "text").unwrap();
    let p = Predictor::from_fit(&d, &f);
    let (lo, hi) = (p.predict(&s, &s.smallest()), p.predict(&s, &s.largest()));
    assert!(lo.is_finite() && hi.is_finite() && hi > lo, "{lo} {hi}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A machine that drifted as a whole (every latency 1.4× slower): a
/// recalibration on the new measurement finds the factor and brings the
/// error back; too few rows are refused naming the file.
#[test]
fn recalibration_follows_a_machine_that_drifted_as_a_whole() {
    let dir = tmp("recalibrate");
    let (mut p, _) = predictor(&dir);
    let csv = dir.join("lat.csv");
    let mut d = dataset::read(&csv).unwrap();
    let original: Vec<f64> = d
        .samples
        .iter()
        .map(|s| p.predict(&d.space, &s.arch))
        .collect();
    // The machine drifted as a whole: every latency is 1.4× what the
    // predictor says (set from its predictions, so that the timing noise
    // of a loaded test machine cannot blur the factor).
    for (s, o) in d.samples.iter_mut().zip(&original) {
        s.ms = 1.4 * o;
    }
    let r = p.recalibrate(&d, &csv).unwrap().clone();
    assert!(r.after.mean_rel < r.before.mean_rel, "{r:?}");
    assert!(r.before.mean_rel > 0.2, "the drift shows before: {r:?}");
    assert!((1.2..1.6).contains(&r.scale), "scale {}", r.scale);
    for (s, o) in d.samples.iter().zip(&original) {
        assert!((p.predict(&d.space, &s.arch) - r.scale * o).abs() < 1e-9);
    }
    // Recalibrating again replaces the factor instead of compounding it.
    let again = p.recalibrate(&d, &csv).unwrap().scale;
    assert!((again - r.scale).abs() < 1e-9);
    d.samples.truncate(latency::MIN_RECALIBRATION_ROWS - 1);
    let e = p.recalibrate(&d, &csv).err().unwrap().to_string();
    assert!(e.contains("lat.csv") && e.contains("at least"), "{e}");
}

/// A predictor is validated at load as strictly as a recipe: every command
/// that reads one (`predict`, `check`, `recalibrate`, `search --predictor`)
/// goes through `Predictor::load`, which refuses, naming the field, a
/// model whose weights do not match its features, are not finite or of a
/// sane size, or predict a latency that is not positive, and a range,
/// batch or recalibration scale that makes no sense.
#[test]
fn a_predictor_is_validated_at_load_naming_the_field() {
    let dir = tmp("validate");
    let (p, _) = predictor(&dir);
    let costs = || -> Vec<String> {
        vitnas::latency::features::COST
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let additive = |weights: Vec<f64>| fit::Model::Additive {
        features: costs(),
        weights,
    };
    let k = vitnas::latency::features::COST.len();
    type Change<'a> = Box<dyn Fn(&mut Predictor) + 'a>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "predicts",
            Box::new(move |p| p.model = additive(vec![-1e-6; k])),
        ),
        (
            "model.weights",
            Box::new(move |p| p.model = additive(vec![1e-9; 3])),
        ),
        (
            "model.weights[0]",
            Box::new(move |p| {
                let mut w = vec![1e-9; k];
                w[0] = 1e308;
                p.model = additive(w)
            }),
        ),
        (
            "model.features",
            Box::new(move |p| {
                p.model = fit::Model::Additive {
                    features: vec!["x".into(); k],
                    weights: vec![1e-9; k],
                }
            }),
        ),
        ("range_ms", Box::new(|p| p.range_ms = [-1.0, 2.0])),
        ("batch", Box::new(|p| p.batch = 0)),
        (
            "recalibration.scale",
            Box::new(|p| {
                p.recalibration = Some(latency::Recalibration {
                    scale: -2.0,
                    rows: 20,
                    before: p.heldout.values().next().copied().unwrap(),
                    after: p.heldout.values().next().copied().unwrap(),
                })
            }),
        ),
    ];
    let bad = dir.join("bad.json");
    for (field, change) in &cases {
        let mut q = p.clone();
        change(&mut q);
        q.save(&bad).unwrap();
        let e = Predictor::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains(field), "{field}: {e}");
    }
    // The kept HAT MLP too: a layer of the wrong shape, a negative scale.
    let mut q = p.clone();
    q.model = fit::Model::HatMlp {
        features: vitnas::latency::features::HAT
            .iter()
            .map(|s| s.to_string())
            .collect(),
        input_scale: vec![1.0; 4],
        output_scale: -1.0,
        layers: vec![(vec![0.1; 4], vec![0.1])],
    };
    q.save(&bad).unwrap();
    let e = Predictor::load(&bad).unwrap_err().to_string();
    assert!(e.contains("model.output_scale"), "{e}");
    if let fit::Model::HatMlp {
        output_scale,
        layers,
        ..
    } = &mut q.model
    {
        *output_scale = 1.0;
        layers[0].0.pop();
    }
    q.save(&bad).unwrap();
    let e = Predictor::load(&bad).unwrap_err().to_string();
    assert!(e.contains("model.layers[0]"), "{e}");
    // Every command that reads a predictor refuses it, naming the file.
    let csv = dir.join("lat.csv");
    let arch = dir.join("arch.json");
    std::fs::write(
        &arch,
        serde_json::to_string(&space("fmnist-tiny").largest()).unwrap(),
    )
    .unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    for args in [
        vec!["latency", "predict", &s(&bad), &s(&arch)],
        vec!["latency", "check", &s(&bad), &s(&csv)],
        vec![
            "latency",
            "recalibrate",
            &s(&bad),
            &s(&csv),
            "--out",
            &s(&dir.join("new.json")),
        ],
    ]
    .iter()
    {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitnas"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("bad.json") && err.contains("model.layers[0]"),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.join("new.json").exists());
}

/// Columns are read by position, so their names are checked: a column
/// line in another order (or missing) is refused naming the line.
#[test]
fn the_latency_csv_column_names_are_checked() {
    let s = space("fmnist-tiny");
    let dir = tmp("columns");
    let csv = dir.join("cols.csv");
    dataset::measure(&s, &quick(3), &csv, |_, _| {}).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let cols =
        "index,genes,embed_dim,depth,num_heads,mlp_ratio,params,macs,mean_ms,std_ms,median_ms";
    assert!(text.contains(cols));
    for bad in [
        text.replace(
            cols,
            "index,genes,embed_dim,depth,num_heads,mlp_ratio,params,macs,median_ms,std_ms,mean_ms",
        ),
        text.replace(&format!("{cols}\n"), ""),
    ] {
        std::fs::write(&csv, bad).unwrap();
        let e = dataset::read(&csv).err().unwrap().to_string();
        assert!(e.contains("cols.csv") && e.contains("column names"), "{e}");
    }
}

/// A measurement stops between two rows when asked (Ctrl-C sets the
/// flag): every row on disk is whole, and the same call continues.
#[test]
fn a_measurement_stops_between_rows_and_continues() {
    let s = space("fmnist-tiny");
    let dir = tmp("stop");
    let csv = dir.join("stop.csv");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (n, interrupted) = dataset::measure_until(&s, &quick(8), &csv, &stop, |done, _| {
        if done == 3 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!((n, interrupted), (3, true));
    assert_eq!(data_rows(&csv).len(), 3);
    assert!(std::fs::read_to_string(&csv).unwrap().ends_with('\n'));
    assert_eq!(dataset::measure(&s, &quick(8), &csv, |_, _| {}).unwrap(), 5);
    assert_eq!(dataset::read(&csv).unwrap().samples.len(), 8);
}

/// The exported file as tract runs it (loaded, typed with its symbolic
/// batch, optimised), on `x`.
fn tract_logits(path: &std::path::Path, x: &candle_core::Tensor) -> candle_core::Tensor {
    use tract_onnx::prelude::{tvec, Framework, InferenceModelExt, IntoRunnable, IntoTValue};
    let m = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let input = tract_onnx::prelude::Tensor::from_shape(x.dims(), &data).unwrap();
    let out = m.run(tvec![input.into_tvalue()]).unwrap();
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    let shape = view.shape().to_vec();
    candle_core::Tensor::from_vec(
        view.iter().copied().collect::<Vec<_>>(),
        shape,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn exported_archs_are_the_planned_subnets_in_onnx_and_their_csv_fits_the_dataset_format() {
    use vitnas::latency::export_archs::{self, ExportOptions};
    let s = space("fmnist-tiny");
    let dir = tmp("export-archs");
    let out = dir.join("archs");
    let opts = ExportOptions {
        n: 3,
        batch: 1,
        seed: 5,
        protocol: Protocol::default(),
    };
    let m = export_archs::export_archs(&s, &opts, &out).unwrap();
    assert_eq!(m, export_archs::read_manifest(&out).unwrap());
    assert_eq!(m.archs.len(), 3);
    assert_eq!(m.space_hash, latency::space_hash(&s));
    // The same architectures `latency measure --seed 5` times.
    let planned = dataset::plan(&s, 3, 5);
    let net = vitnas::train::build_supernet(&s, 5, Default::default())
        .unwrap()
        .0;
    for (e, want) in m.archs.iter().zip(&planned) {
        assert_eq!(&e.arch, want);
        assert_eq!(e.genes, e.arch.to_genes(&s).unwrap());
        let path = out.join(&e.file);
        assert!(path.is_file(), "{} missing", path.display());
        // The file is that subnet: tract's logits are the engine's.
        let x = common::images(&s, 2, e.index as u64);
        let got = tract_logits(&path, &x);
        assert_eq!(got.dims(), &[2, s.image().num_classes]);
        let engine = vitnas::engine::Model::from_vit(&net.extract(&e.arch).unwrap()).unwrap();
        let want = engine.logits(&x).unwrap();
        let d = common::max_abs_diff(&got, &want);
        assert!(
            d <= 1e-4 * common::max_abs(&want).max(1.0),
            "{}: {d}",
            e.file
        );
    }
    // A CSV written from the manifest as evaluate/ort_latency.py writes it
    // is a dataset `latency fit` reads, with the manifest's architectures.
    let mut csv = format!(
        "# format: {}\n# space: {}\n# space_hash: {}\n# cpu: test\n# simd: onnxruntime 0\n\
         # gemm_avx512: false\n# threads: 1\n# batch: {}\n# seed: {}\n# n: {}\n# warmup: {}\n\
         # runs: {}\n# trim: {}\n# runtime: onnxruntime 0\n",
        m.dataset_format,
        m.space_name,
        m.space_hash,
        m.batch,
        m.seed,
        m.n,
        m.protocol.warmup,
        m.protocol.runs,
        m.protocol.trim
    );
    for l in m.space_toml.lines() {
        csv.push_str(&format!("#| {l}\n"));
    }
    csv.push_str(&format!("{}\n", m.columns));
    for e in &m.archs {
        csv.push_str(&format!("{},0.5,0.01,0.5\n", e.csv_prefix));
    }
    let path = dir.join("lat.csv");
    std::fs::write(&path, csv).unwrap();
    let d = dataset::read(&path).unwrap();
    assert_eq!(d.header.machine.simd, "onnxruntime 0");
    let archs: Vec<_> = d.samples.iter().map(|x| x.arch.clone()).collect();
    assert_eq!(archs, planned);
    // A second export into the same directory is refused.
    let e = export_archs::export_archs(&s, &opts, &out).unwrap_err();
    assert!(e.to_string().contains("already holds"), "{e}");
}

/// `ids` and an all-ones mask (as ort_latency.py feeds text), as tract
/// runs the file at `path` (its external data read beside it).
fn tract_text_logits(path: &std::path::Path, ids: &[i64]) -> candle_core::Tensor {
    use tract_onnx::prelude::{tvec, Framework, InferenceModelExt, IntoRunnable, IntoTValue};
    let m = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let shape = [1, ids.len()];
    let ids = tract_onnx::prelude::Tensor::from_shape(&shape, ids).unwrap();
    let mask = tract_onnx::prelude::Tensor::from_shape(&shape, &vec![1i64; shape[1]]).unwrap();
    let out = m.run(tvec![ids.into_tvalue(), mask.into_tvalue()]).unwrap();
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    let shape = view.shape().to_vec();
    candle_core::Tensor::from_vec(
        view.iter().copied().collect::<Vec<_>>(),
        shape,
        &Device::Cpu,
    )
    .unwrap()
}

/// Text spaces (pooler and mean pooling): each file holds the encoder, and
/// its word embeddings are ONNX external data, the whole table of its width
/// shared by every file of that width; tract reads them and computes the
/// engine's logits for ids anywhere in the vocabulary.
#[test]
fn exported_text_archs_share_one_embedding_table_per_width_and_run_in_tract_as_in_the_engine() {
    use onnx_protobuf::Message;
    use vitnas::latency::export_archs::{self, ExportOptions};
    for pooling in ["pooler", "mean"] {
        let s = common::tiny_bert(pooling, "[2, 4]");
        let out = tmp(&format!("export-archs-text-{pooling}")).join("archs");
        let opts = ExportOptions {
            n: 2,
            batch: 1,
            seed: 3,
            protocol: Protocol::default(),
        };
        let m = export_archs::export_archs(&s, &opts, &out).unwrap();
        assert_eq!(m, export_archs::read_manifest(&out).unwrap());
        let t = s.text.as_ref().unwrap();
        assert_eq!(m.input_shape, vec![1, t.seq_len]);
        let text = m.text.as_ref().expect("a text manifest records its inputs");
        assert_eq!((text.seq_len, text.vocab_size), (t.seq_len, t.vocab_size));
        let archs: Vec<_> = m.archs.iter().map(|e| e.arch.clone()).collect();
        assert_eq!(archs, dataset::plan(&s, 2, 3));
        let latency::Timed::Text(net) = latency::Timed::build(&s, 3).unwrap() else {
            panic!("a text space builds a text supernet")
        };
        // Ids over the whole vocabulary, the last one included.
        let ids: Vec<i64> = (0..t.seq_len)
            .map(|i| ((i * 17 + 5) % t.vocab_size) as i64)
            .chain([t.vocab_size as i64 - 1])
            .skip(1)
            .collect();
        for e in &m.archs {
            let w = e.arch.embed_dim;
            let table = out.join(&text.word_embeddings[&w]);
            let table_bytes = std::fs::metadata(&table).unwrap().len() as usize;
            assert_eq!(table_bytes, t.vocab_size * w * 4, "{}", table.display());
            // The file's table is that shared file, as external data.
            let path = out.join(&e.file);
            let model = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&path).unwrap())
                .unwrap();
            let words = model
                .graph
                .initializer
                .iter()
                .find(|i| i.name == vitnas::models::onnx::WORD_EMBEDDINGS)
                .unwrap();
            assert!(words.raw_data.is_empty(), "{}", e.file);
            assert_eq!(words.dims, vec![t.vocab_size as i64, w as i64]);
            let kv: Vec<(&str, &str)> = words
                .external_data
                .iter()
                .map(|x| (x.key.as_str(), x.value.as_str()))
                .collect();
            let length = table_bytes.to_string();
            assert_eq!(
                kv,
                [
                    ("location", text.word_embeddings[&w].as_str()),
                    ("offset", "0"),
                    ("length", length.as_str())
                ]
            );
            let got = tract_text_logits(&path, &ids);
            assert_eq!(got.dims(), &[1, t.num_classes], "{}", e.file);
            let engine = vitnas::engine::Model::from_bert(&net.extract(&e.arch).unwrap()).unwrap();
            let ids_u32: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
            let ids_t =
                candle_core::Tensor::from_vec(ids_u32, (1, ids.len()), &Device::Cpu).unwrap();
            let mask =
                candle_core::Tensor::ones((1, ids.len()), candle_core::DType::U32, &Device::Cpu)
                    .unwrap();
            let want = engine.token_logits(&ids_t, &mask).unwrap();
            let d = common::max_abs_diff(&got, &want);
            assert!(
                d <= 1e-4 * common::max_abs(&want).max(1.0),
                "{pooling} {}: {d}",
                e.file
            );
        }
        let _ = std::fs::remove_dir_all(out.parent().unwrap());
    }
}

/// The real target, bert-minilm-mean at 128 tokens: two architectures
/// export as files of the encoder only (the 30,522-row tables beside them)
/// that tract runs to `[1, 2]` logits.
#[test]
fn bert_minilm_mean_archs_export_without_their_embedding_tables_and_run_in_tract() {
    use vitnas::latency::export_archs::{self, ExportOptions};
    let s = space("bert-minilm-mean");
    let out = tmp("export-archs-minilm").join("archs");
    let opts = ExportOptions {
        n: 2,
        batch: 1,
        seed: 0,
        protocol: Protocol::default(),
    };
    let m = export_archs::export_archs(&s, &opts, &out).unwrap();
    assert_eq!(m.input_shape, vec![1, 128]);
    let text = m.text.as_ref().unwrap();
    assert_eq!(text.vocab_size, 30522);
    let ids: Vec<i64> = (0..128).map(|i| (i * 239 + 101) % 30522).collect();
    for e in &m.archs {
        let path = out.join(&e.file);
        let table = 30522 * e.arch.embed_dim * 4;
        let bytes = std::fs::metadata(&path).unwrap().len() as usize;
        let params = vitnas::space::params(&s, &e.arch) as usize;
        assert!(bytes < params * 4 - table + 8192, "{}: {bytes}", e.file);
        let got = tract_text_logits(&path, &ids);
        assert_eq!(got.dims(), &[1, 2], "{}", e.file);
        assert!(got
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
    }
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}
