//! Dataset readers and batching.

mod common;

use candle_core::Device;
use common::repo_path;
use rand::{rngs::StdRng, SeedableRng};
use std::path::PathBuf;
use vitnas::data::batch::{epoch_order, make_batch, Augment, Normalize};
use vitnas::data::{self, cifar, folder, idx, Split};

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-data-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bundled_fashion_mnist_sample_has_1000_train_and_200_test_images_per_class() {
    let dir = repo_path("data/fashion-mnist-sample");
    for (split, n) in [(Split::Train, 10_000), (Split::Test, 2_000)] {
        let ds = idx::load_split(&dir, split).unwrap();
        assert_eq!(
            (ds.len(), ds.channels, ds.height, ds.width, ds.num_classes),
            (n, 1, 28, 28, 10)
        );
        for c in 0..10 {
            assert_eq!(ds.labels.iter().filter(|&&l| l == c).count(), n / 10);
        }
        assert!(ds.images.iter().any(|&p| p > 200), "images are not blank");
    }
}

#[test]
fn full_fashion_mnist_is_read_when_present() {
    let dir = repo_path("../shared/data/fashion-mnist");
    if !dir.is_dir() {
        eprintln!("skipped: {} not present", dir.display());
        return;
    }
    let ds = data::load(data::Format::Idx, &dir, Split::Train, 28, 1).unwrap();
    assert_eq!(ds.len(), 60_000);
}

#[test]
fn fashion_mnist_dir_environment_variable_is_searched_first() {
    // Only this test reads FASHION_MNIST_DIR in this test binary.
    let sample = repo_path("data/fashion-mnist-sample");
    std::env::set_var("FASHION_MNIST_DIR", &sample);
    let found = data::resolve_dir(None, data::FASHION_MNIST_DIRS);
    // Set but not a directory: an error naming the variable and its value,
    // not a silent fall-through to the default places.
    std::env::set_var("FASHION_MNIST_DIR", "/nonexistent/fmnist");
    let wrong = data::resolve_dir(None, data::FASHION_MNIST_DIRS);
    std::env::remove_var("FASHION_MNIST_DIR");
    assert_eq!(found.unwrap(), sample);
    let msg = wrong.unwrap_err().to_string();
    assert!(
        msg.contains("$FASHION_MNIST_DIR=/nonexistent/fmnist"),
        "{msg}"
    );
    // An explicit path wins over every candidate.
    let d = tmp_dir("explicit");
    assert_eq!(
        data::resolve_dir(Some(&d), data::FASHION_MNIST_DIRS).unwrap(),
        d
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn unset_variables_and_missing_directories_are_listed_when_nothing_is_found() {
    let msg = data::resolve_dir(
        None,
        &[
            "$VITNAS_TEST_SURELY_UNSET_VARIABLE",
            "/nonexistent/a",
            "/nonexistent/b",
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("$VITNAS_TEST_SURELY_UNSET_VARIABLE (unset)")
            && msg.contains("/nonexistent/a")
            && msg.contains("/nonexistent/b"),
        "{msg}"
    );
}

#[test]
fn truncated_and_foreign_idx_files_are_refused_naming_the_file() {
    let d = tmp_dir("idx");
    let src = repo_path("data/fashion-mnist-sample");
    let bytes = idx::read_maybe_gz(&src.join("t10k-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(
        d.join("t10k-images-idx3-ubyte"),
        &bytes[..bytes.len() - 100],
    )
    .unwrap();
    std::fs::copy(
        src.join("t10k-labels-idx1-ubyte.gz"),
        d.join("t10k-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    let msg = idx::load_split(&d, Split::Test).unwrap_err().to_string();
    assert!(
        msg.contains("t10k-images-idx3-ubyte") && msg.contains("bytes of data"),
        "{msg}"
    );
    std::fs::write(d.join("t10k-images-idx3-ubyte"), b"PNG not idx").unwrap();
    let msg = idx::load_split(&d, Split::Test).unwrap_err().to_string();
    assert!(msg.contains("bad magic"), "{msg}");
    let msg = idx::load_split(&d, Split::Train).unwrap_err().to_string();
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn cifar_binary_records_are_parsed_with_planar_channels() {
    // Two CIFAR-10 records (label byte + R, G, B planes) and one CIFAR-100
    // record (coarse, fine, planes), as the published binaries lay them out.
    let mut c10 = vec![3u8];
    c10.extend((0..3072).map(|i| (i / 1024) as u8));
    c10.push(7);
    c10.extend(std::iter::repeat_n(9u8, 3072));
    let (img, lab) = cifar::parse(std::path::Path::new("x.bin"), &c10, false).unwrap();
    assert_eq!(lab, [3, 7]);
    assert_eq!((img[0], img[1024], img[2048], img[3072]), (0, 1, 2, 9));
    let mut c100 = vec![4u8, 42];
    c100.extend(std::iter::repeat_n(1u8, 3072));
    let (_, lab) = cifar::parse(std::path::Path::new("y.bin"), &c100, true).unwrap();
    assert_eq!(lab, [42]);
    let msg = cifar::parse(std::path::Path::new("z.bin"), &c10[..5000], false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("z.bin") && msg.contains("3073-byte"), "{msg}");
}

#[test]
fn image_folder_reads_classes_in_order_and_resizes() {
    let d = tmp_dir("folder");
    for (c, shade) in [("boot", 250u8), ("coat", 10u8)] {
        std::fs::create_dir_all(d.join("train").join(c)).unwrap();
        for k in 0..2 {
            let img = image::GrayImage::from_pixel(40, 30, image::Luma([shade]));
            img.save(d.join("train").join(c).join(format!("{k}.png")))
                .unwrap();
        }
    }
    std::fs::write(d.join("train/boot/notes.txt"), "not an image").unwrap();
    let ds = folder::load_split(&d, Split::Train, 28, 1).unwrap();
    assert_eq!(
        (ds.len(), ds.num_classes, ds.height, ds.width),
        (4, 2, 28, 28)
    );
    assert_eq!(ds.labels, [0, 0, 1, 1]);
    assert!(ds.image(0).iter().all(|&p| p == 250) && ds.image(3).iter().all(|&p| p == 10));
    let rgb = folder::load_split(&d, Split::Train, 8, 3).unwrap();
    assert_eq!(rgb.image_len(), 3 * 64);
    std::fs::write(d.join("train/coat/broken.png"), b"not a png").unwrap();
    let msg = folder::load_split(&d, Split::Train, 28, 1)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("broken.png"), "{msg}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn validation_split_is_seeded_and_disjoint() {
    let ds = idx::load_split(&repo_path("data/fashion-mnist-sample"), Split::Test).unwrap();
    let (t1, v1) = ds.split_validation(300, 5).unwrap();
    let (t2, v2) = ds.split_validation(300, 5).unwrap();
    let (_, v3) = ds.split_validation(300, 6).unwrap();
    assert_eq!((t1.len(), v1.len()), (1700, 300));
    assert_eq!(
        (v1.images.clone(), v1.labels.clone()),
        (v2.images, v2.labels)
    );
    assert_ne!(v1.images, v3.images);
    assert_eq!(t1.images, t2.images);
    assert!(ds.split_validation(2000, 0).is_err());
}

#[test]
fn batches_are_normalised_and_augmentation_is_seeded() {
    let ds = idx::load_split(&repo_path("data/fashion-mnist-sample"), Split::Test).unwrap();
    let norm = Normalize {
        mean: vec![0.5],
        std: vec![0.25],
    };
    let idx: Vec<usize> = (0..8).collect();
    let (x, y) = make_batch(&ds, &idx, &norm, None, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[8, 1, 28, 28]);
    assert_eq!(y.to_vec1::<u32>().unwrap(), ds.labels[..8].to_vec());
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let want = (ds.images[100] as f32 / 255.0 - 0.5) / 0.25;
    assert!((v[100] - want).abs() < 1e-5);
    let aug = Augment {
        crop_padding: 3,
        hflip: true,
    };
    let batch = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        make_batch(&ds, &idx, &norm, Some((&aug, &mut rng)), &Device::Cpu)
            .unwrap()
            .0
    };
    let (a, b, c) = (batch(1), batch(1), batch(2));
    let diff = |p: &candle_core::Tensor, q: &candle_core::Tensor| common::max_abs_diff(p, q);
    assert_eq!(diff(&a, &b), 0.0);
    assert!(diff(&a, &c) > 0.1);
    assert!(diff(&a, &x) > 0.1);
    // Epoch orders are permutations, seeded by (seed, epoch).
    let o = epoch_order(100, 3, 0);
    let mut s = o.clone();
    s.sort();
    assert_eq!(s, (0..100).collect::<Vec<_>>());
    assert_eq!(o, epoch_order(100, 3, 0));
    assert_ne!(o, epoch_order(100, 3, 1));
}
