//! The elastic supernet: forward equivalence with extracted subnets, weight
//! entanglement in the gradients, parameter counts, tensor names.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use common::{images, max_abs_diff, scaled_supernet, space, supernet, SWITCHES};
use rand::{rngs::StdRng, SeedableRng};
use std::collections::HashMap;
use vitnas::models::vit::Vit;
use vitnas::space::{params, Arch, Space};

fn archs(s: &Space) -> Vec<(String, Arch)> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut v = vec![
        ("largest".to_string(), s.largest()),
        ("smallest".to_string(), s.smallest()),
    ];
    v.extend((0..3).map(|k| (format!("random{k}"), s.sample(&mut rng))));
    v
}

#[test]
fn extracted_subnet_matches_supernet_forward() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 0);
    let x = images(&s, 5, 1);
    for (name, arch) in archs(&s) {
        let a = net.forward(&x, &arch, false).unwrap();
        let sub = net.extract(&arch).unwrap();
        let b = sub.forward(&x).unwrap();
        assert_eq!(a.dims(), &[5, 10]);
        let d = max_abs_diff(&a, &b);
        assert!(d <= 1e-5, "{name}: max abs diff {d}");
    }
}

#[test]
fn parameter_count_equals_extracted_tensor_elements() {
    for sp in ["fmnist-tiny", "autoformer-tiny"] {
        let s = space(sp);
        let (net, _vm) = supernet(&s, 0);
        for (name, arch) in archs(&s)
            .into_iter()
            .take(if sp == "fmnist-tiny" { 5 } else { 2 })
        {
            let sub = net.extract(&arch).unwrap();
            assert_eq!(sub.num_params() as u64, params(&s, &arch), "{sp} {name}");
        }
    }
}

#[test]
fn extracted_subnet_is_contiguous_and_independent_of_the_supernet() {
    let s = space("fmnist-tiny");
    let (net, vm) = supernet(&s, 0);
    let arch = s.smallest();
    let sub = net.extract(&arch).unwrap();
    for (name, t) in sub.tensors() {
        assert!(t.is_contiguous(), "{name} not contiguous");
    }
    let x = images(&s, 2, 4);
    let before = sub.forward(&x).unwrap();
    // Changing the supernet's weights must not change the extracted subnet.
    for var in vm.all_vars() {
        var.set(&var.as_tensor().ones_like().unwrap()).unwrap();
    }
    assert_eq!(max_abs_diff(&before, &sub.forward(&x).unwrap()), 0.0);
    assert!(max_abs_diff(&before, &net.forward(&x, &arch, false).unwrap()) > 1e-3);
}

#[test]
fn extracted_subnet_round_trips_through_safetensors_with_hf_names() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 2);
    let arch = s.sample(&mut StdRng::seed_from_u64(9));
    let sub = net.extract(&arch).unwrap();
    let dir = std::env::temp_dir().join(format!("vitnas-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("model.safetensors");
    let map: HashMap<String, Tensor> = sub.tensors().into_iter().collect();
    candle_core::safetensors::save(&map, &file).unwrap();
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, &Device::Cpu).unwrap() };
    let loaded = Vit::load(&sub.config, vb).unwrap();
    let x = images(&s, 3, 5);
    assert_eq!(
        max_abs_diff(&sub.forward(&x).unwrap(), &loaded.forward(&x).unwrap()),
        0.0
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn supernet_tensor_names_mirror_hugging_face_vit() {
    let s = space("fmnist-tiny");
    let (_net, vm) = supernet(&s, 0);
    let data = vm.data().lock().unwrap();
    let shape = |n: &str| {
        data.get(n)
            .unwrap_or_else(|| panic!("missing {n}"))
            .shape()
            .dims()
            .to_vec()
    };
    assert_eq!(
        shape("vit.embeddings.patch_embeddings.projection.weight"),
        [128, 1, 4, 4]
    );
    assert_eq!(shape("vit.embeddings.cls_token"), [1, 1, 128]);
    assert_eq!(shape("vit.embeddings.position_embeddings"), [1, 50, 128]);
    assert_eq!(
        shape("vit.encoder.layer.5.attention.attention.query.weight"),
        [128, 128]
    );
    assert_eq!(
        shape("vit.encoder.layer.0.attention.attention.key.bias"),
        [128]
    );
    assert_eq!(
        shape("vit.encoder.layer.0.attention.attention.value.weight"),
        [128, 128]
    );
    assert_eq!(
        shape("vit.encoder.layer.0.attention.output.dense.weight"),
        [128, 128]
    );
    assert_eq!(
        shape("vit.encoder.layer.0.intermediate.dense.weight"),
        [512, 128]
    );
    assert_eq!(shape("vit.encoder.layer.0.output.dense.weight"), [128, 512]);
    assert_eq!(shape("vit.encoder.layer.0.layernorm_before.weight"), [128]);
    assert_eq!(shape("vit.encoder.layer.0.layernorm_after.bias"), [128]);
    assert_eq!(shape("vit.layernorm.weight"), [128]);
    assert_eq!(shape("classifier.weight"), [10, 128]);
    // 4 embedding tensors + 16 per layer + 2 final norm + 2 classifier.
    assert_eq!(data.len(), 4 + 16 * 6 + 4);
}

#[test]
fn same_seed_builds_the_same_supernet() {
    let s = space("fmnist-tiny");
    let x = images(&s, 2, 0);
    let out = |seed| {
        supernet(&s, seed)
            .0
            .forward(&x, &s.largest(), false)
            .unwrap()
    };
    assert_eq!(max_abs_diff(&out(3), &out(3)), 0.0);
    assert!(max_abs_diff(&out(3), &out(4)) > 1e-4);
}

/// For each element of `grad` (shape `full`), whether it lies in the leading
/// block of shape `used`, from row `first_row` on.
fn for_each_element(
    full: &[usize],
    first_row: usize,
    used: &[usize],
    grad: &[f32],
    mut f: impl FnMut(bool, f32),
) {
    let mut idx = vec![0usize; full.len()];
    for &g in grad {
        let inside = idx.iter().zip(used).all(|(i, u)| i < u) && idx[0] >= first_row;
        f(inside, g);
        for d in (0..full.len()).rev() {
            idx[d] += 1;
            if idx[d] < full[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Backpropagates a cross-entropy loss of `arch` and checks every supernet
/// variable: inside the slice the subnet uses (the extracted tensor's shape),
/// every gradient element is non-zero; outside it, every element is exactly
/// zero; variables of unused layers get no gradient or an all-zero one.
fn check_gradients(s: &Space, arch: &Arch) {
    let (net, vm) = supernet(s, 1);
    check_gradients_of(s, arch, &net, &vm);
}

/// [`check_gradients`] of a given supernet; its scaling tables, if any, are
/// used at the row its switch picks for `arch`, first `embed_dim` columns.
fn check_gradients_of(s: &Space, arch: &Arch, net: &vitnas::Supernet, vm: &candle_nn::VarMap) {
    let x = images(s, 4, 2);
    let labels = Tensor::new(&[1u32, 3, 5, 7], &Device::Cpu).unwrap();
    let logits = net.forward(&x, arch, true).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let grads = loss.backward().unwrap();
    let mut used: HashMap<String, (usize, Vec<usize>)> = net
        .extract(arch)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (0, t.dims().to_vec())))
        .collect();
    if let Some(scaling) = &net.scaling {
        for l in 0..arch.depth {
            let row = scaling.row(arch, l).unwrap();
            for t in ["attention", "mlp"] {
                used.insert(
                    format!("vit.encoder.layer.{l}.scaling.{t}"),
                    (row, vec![row + 1, arch.embed_dim]),
                );
            }
        }
    }
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let tables = if net.scaling.is_some() { 2 } else { 0 };
    assert_eq!(names.len(), 4 + (16 + tables) * s.supernet.depth + 4);
    for name in names {
        let var: &Var = &data[name];
        let full = var.dims().to_vec();
        let g = grads.get(var.as_tensor());
        match used.get(name) {
            Some((first_row, shape)) => {
                let g =
                    g.unwrap_or_else(|| panic!("{name}: no gradient although the subnet uses it"));
                assert_eq!(g.dims(), &full[..], "{name}: gradient shape");
                let v = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let (mut zero_inside, mut nonzero_outside) = (0, 0);
                for_each_element(&full, *first_row, shape, &v, |inside, x| {
                    if inside && x == 0.0 {
                        zero_inside += 1;
                    }
                    if !inside && x != 0.0 {
                        nonzero_outside += 1;
                    }
                });
                // The key bias adds the same q·b to every score of a query, which
                // softmax cancels: its true gradient is 0 (rounding noise only).
                if !name.ends_with("attention.attention.key.bias") {
                    assert_eq!(
                        zero_inside, 0,
                        "{name}: {zero_inside} zero gradients inside the used slice {shape:?}"
                    );
                }
                assert_eq!(
                    nonzero_outside, 0,
                    "{name}: {nonzero_outside} non-zero gradients outside the slice {shape:?}"
                );
            }
            None => {
                if let Some(g) = g {
                    let m = common::max_abs(g);
                    assert_eq!(m, 0.0, "{name}: unused layer has a non-zero gradient");
                }
            }
        }
    }
}

#[test]
fn largest_subnet_gives_every_parameter_a_gradient() {
    let s = space("fmnist-tiny");
    check_gradients(&s, &s.largest());
}

#[test]
fn smaller_subnets_get_gradients_exactly_inside_their_slices() {
    let s = space("fmnist-tiny");
    check_gradients(&s, &s.smallest());
    let mut rng = StdRng::seed_from_u64(21);
    for _ in 0..2 {
        check_gradients(&s, &s.sample(&mut rng));
    }
}

#[test]
fn forward_refuses_bad_input_and_out_of_space_arch() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 0);
    let wrong = Tensor::zeros((2, 3, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let msg = net
        .forward(&wrong, &s.largest(), false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("input images") && msg.contains("[batch, 1, 28, 28]"),
        "{msg}"
    );
    let mut a = s.largest();
    a.depth = 7;
    a.num_heads.push(4);
    a.mlp_ratio.push(4.0);
    let msg = net
        .forward(&images(&s, 1, 0), &a, false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("depth"), "{msg}");
}

/// With scaling layers under every switch: every parameter the subnet uses
/// gets a gradient, exactly inside its slice (the tables: the subnet's row,
/// its first embed-dim columns), and the extracted subnet, with the scales
/// folded into its weights, gives the supernet's logits.
#[test]
fn scaling_tables_get_gradients_exactly_in_the_selected_row_and_fold_away() {
    let s = space("fmnist-tiny");
    let mut rng = StdRng::seed_from_u64(5);
    let sampled = s.sample(&mut rng);
    let x = images(&s, 3, 9);
    for switch in SWITCHES {
        let (net, vm) = scaled_supernet(&s, 1, switch, 0.5);
        // each entry of every table its own value
        for (i, (name, v)) in vm.data().lock().unwrap().iter().enumerate() {
            if name.contains(".scaling.") {
                let t = (v.as_tensor() + common::uniform(v.dims(), i as u64, 0.4)).unwrap();
                v.set(&t).unwrap();
            }
        }
        for arch in [s.largest(), s.smallest(), sampled.clone()] {
            check_gradients_of(&s, &arch, &net, &vm);
            let want = net.forward(&x, &arch, false).unwrap();
            let got = net.extract(&arch).unwrap().forward(&x).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= 1e-5,
                "{switch:?} {arch:?}: folded subnet differs by {d}"
            );
        }
    }
}

#[test]
fn layer_config_switch_refuses_an_off_grid_layer_naming_it() {
    let s = space("fmnist-tiny");
    let (net, _vm) = scaled_supernet(&s, 0, vitnas::supernet::scaling::Switch::LayerConfig, 1e-4);
    let mut arch = s.smallest();
    arch.mlp_ratio[1] = 2.5;
    let x = images(&s, 1, 0);
    let msg = net.forward(&x, &arch, false).unwrap_err().to_string();
    assert!(
        msg.contains("layer_config") && msg.contains("layer 1"),
        "{msg}"
    );
    assert!(net.extract(&arch).is_err());
}
