//! Data-parallel training and the collective helpers, without MPI: the
//! ranks are threads of this process joined by an in-process collective
//! (`Threads`), so the default suite checks the logic; the same checks on
//! real MPI ranks are tests/mpi.rs (`.ci/mpi.sh`).

mod common;

use candle_core::Device;
use common::small_quickstart as small_recipe;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier, Mutex};
use vitnas::data::batch::{make_batch, make_batch_part, Normalize};
use vitnas::dist::{self, Collective, Single};
use vitnas::train::checkpoint::read_safetensors;
use vitnas::train::recipe::{GradientConfig, Recipe};
use vitnas::train::{self, sampler, step_rng, RunOptions, Summary, CHECKPOINT_FILE};

/// What the ranks of [`Threads`] share.
struct Shared {
    size: usize,
    barrier: Barrier,
    f32s: Mutex<Vec<Vec<f32>>>,
    f64s: Mutex<Vec<Vec<f64>>>,
    bytes: Mutex<Vec<u8>>,
}

/// One rank of an in-process collective: each rank a thread. Sums are
/// taken in rank order, like MPI's for a fixed number of ranks.
struct Threads {
    rank: usize,
    s: Arc<Shared>,
}

impl Threads {
    fn world(size: usize) -> Vec<Threads> {
        let s = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            f32s: Mutex::new(vec![Vec::new(); size]),
            f64s: Mutex::new(vec![Vec::new(); size]),
            bytes: Mutex::new(Vec::new()),
        });
        (0..size)
            .map(|rank| Threads { rank, s: s.clone() })
            .collect()
    }

    fn reduce<T: Copy + std::ops::Add<Output = T>>(
        &self,
        slots: &Mutex<Vec<Vec<T>>>,
        buf: &mut [T],
    ) {
        slots.lock().unwrap()[self.rank] = buf.to_vec();
        self.s.barrier.wait();
        {
            let all = slots.lock().unwrap();
            for (i, x) in buf.iter_mut().enumerate() {
                *x = (1..self.s.size).fold(all[0][i], |acc, r| acc + all[r][i]);
            }
        }
        self.s.barrier.wait();
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.s.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> vitnas::Result<()> {
        self.reduce(&self.s.f32s, buf);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> vitnas::Result<()> {
        self.reduce(&self.s.f64s, buf);
        Ok(())
    }
    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> vitnas::Result<()> {
        if self.rank == root {
            *self.s.bytes.lock().unwrap() = buf.clone();
        }
        self.s.barrier.wait();
        *buf = self.s.bytes.lock().unwrap().clone();
        self.s.barrier.wait();
        Ok(())
    }
    fn barrier(&self) -> vitnas::Result<()> {
        self.s.barrier.wait();
        Ok(())
    }
    fn wait_for_all(&self) -> vitnas::Result<()> {
        self.barrier()
    }
}

/// Runs `f` on every rank of a `size`-rank world, each on its own thread;
/// the results in rank order.
fn on_ranks<T: Send>(size: usize, f: impl Fn(&Threads) -> T + Sync) -> Vec<T> {
    let world = Threads::world(size);
    std::thread::scope(|s| {
        let handles: Vec<_> = world.iter().map(|r| s.spawn(|| f(r))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-dp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn train_on(r: &Recipe, c: &dyn Collective) -> vitnas::Result<Summary> {
    let stop = AtomicBool::new(false);
    let opts = RunOptions {
        resume: false,
        stop: &stop,
        progress: false,
        max_steps: Some(12),
        force: false,
        collective: c,
    };
    train::train(r, &opts)
}

/// The per-step losses and gradient norms of a run's metrics.jsonl.
fn losses(dir: &Path) -> Vec<(Vec<f64>, f64)> {
    std::fs::read_to_string(dir.join(train::METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("losses").is_some())
        .map(|v| {
            let l = v["losses"].as_array().unwrap();
            let l = l.iter().map(|x| x.as_f64().unwrap()).collect();
            (l, v["grad_norm"].as_f64().unwrap())
        })
        .collect()
}

/// Trains `r` on one rank and on two (threads), and checks that the two
/// agree to float rounding: losses, gradient norms, weights and AdamW
/// moments.
fn assert_two_ranks_match_one(r: &Recipe, tag: &str) {
    let one = tmp_dir(&format!("{tag}-1"));
    let two = tmp_dir(&format!("{tag}-2"));
    let mut r1 = r.clone();
    r1.output_dir = one.clone();
    train_on(&r1, &Single).unwrap();
    let mut r2 = r.clone();
    r2.output_dir = two.clone();
    let summaries = on_ranks(2, |c| train_on(&r2, c).unwrap());
    assert_eq!(summaries[0].steps, 12);
    let dp = summaries[0]
        .data_parallel
        .as_ref()
        .expect("a 2-rank run reports");
    assert_eq!((dp.world_size, dp.steps), (2, 12));
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 12);
    assert_eq!(a.len(), b.len());
    for (step, ((la, ga), (lb, gb))) in a.iter().zip(&b).enumerate() {
        for (x, y) in la.iter().zip(lb) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "step {step}: loss {x} vs {y}"
            );
        }
        assert!(
            (ga - gb).abs() <= 1e-4 * ga.max(1.0),
            "step {step}: grad norm {ga} vs {gb}"
        );
    }
    let wa = read_safetensors(&one.join(CHECKPOINT_FILE), &Device::Cpu)
        .unwrap()
        .0;
    let wb = read_safetensors(&two.join(CHECKPOINT_FILE), &Device::Cpu)
        .unwrap()
        .0;
    assert_eq!(wa.len(), wb.len());
    for (name, ta) in &wa {
        let diff = (ta - &wb[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Measured: 5e-5 at most after 20 quickstart steps, on the key
        // biases (gradient near 0, so AdamW's normalised step amplifies a
        // rounding); the bound leaves a factor 10.
        assert!(diff < 5e-4, "{name}: max difference {diff}");
    }
    let _ = std::fs::remove_dir_all(one);
    let _ = std::fs::remove_dir_all(two);
}

#[test]
fn two_ranks_train_what_one_rank_trains_on_the_same_global_batch() {
    let r = small_recipe(Path::new("unused"));
    assert_two_ranks_match_one(&r, "sum");
}

#[test]
fn two_ranks_with_nasvit_projection_and_scaling_layers_train_what_one_rank_trains() {
    let mut r = small_recipe(Path::new("unused"));
    r.gradient = GradientConfig::Nasvit {
        start_epoch: 0,
        clip_small: 0.5,
    };
    r.scaling.enabled = true;
    assert_two_ranks_match_one(&r, "nasvit");
}

/// A rank of [`Threads`] whose gradient sums are off by a rounding on
/// rank 1: its weights drift from rank 0's.
struct Drifting(Threads);

impl Collective for Drifting {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> vitnas::Result<()> {
        self.0.all_reduce_sum(buf)?;
        if self.0.rank == 1 {
            buf[0] += 1e-3;
        }
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> vitnas::Result<()> {
        self.0.all_reduce_sum_f64(buf)
    }
    fn broadcast(&self, buf: &mut Vec<u8>, root: usize) -> vitnas::Result<()> {
        self.0.broadcast(buf, root)
    }
    fn barrier(&self) -> vitnas::Result<()> {
        self.0.barrier()
    }
    fn wait_for_all(&self) -> vitnas::Result<()> {
        self.0.wait_for_all()
    }
}

#[test]
fn ranks_whose_weights_drift_apart_stop_at_the_next_checkpoint() {
    // The ranks compare a checksum of their weights at every checkpoint
    // (the runs above pass it at steps 3, 6, 9 and 12); one that drifts is
    // caught at the first.
    let dir = tmp_dir("drift");
    let r = small_recipe(&dir);
    let world = Threads::world(2);
    let errs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = world
            .into_iter()
            .map(|t| {
                let r = &r;
                s.spawn(move || train_on(r, &Drifting(t)).unwrap_err().to_string())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in errs {
        assert!(
            e.contains("rank 1 of 2 holds a different set of weights after step 3")
                && e.contains("diverged"),
            "{e}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A collective of `size` ranks on which this process is rank 0 and every
/// operation leaves its input unchanged: enough for checks that refuse
/// before any data moves.
struct Pretend(usize);

impl Collective for Pretend {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        self.0
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> vitnas::Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> vitnas::Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut Vec<u8>, _: usize) -> vitnas::Result<()> {
        Ok(())
    }
    fn barrier(&self) -> vitnas::Result<()> {
        Ok(())
    }
    fn wait_for_all(&self) -> vitnas::Result<()> {
        Ok(())
    }
}

#[test]
fn a_batch_size_the_ranks_cannot_share_is_refused_before_anything_is_written() {
    let dir = tmp_dir("batch");
    let r = small_recipe(&dir);
    let err = train_on(&r, &Pretend(3)).unwrap_err().to_string();
    assert!(
        err.contains("train.batch_size") && err.contains("not a multiple of the 3 ranks"),
        "{err}"
    );
    assert!(!dir.exists(), "nothing is written");
}

#[test]
fn shards_of_a_batch_are_slices_of_the_whole_batch_and_leave_the_rng_alike() {
    let r = small_recipe(Path::new("unused"));
    let space = vitnas::Space::from_file(&r.space).unwrap();
    let data = train::load_train_val(&r, &space).unwrap();
    let norm: Normalize = data.norm.clone();
    let idx: Vec<usize> = (0..32).map(|i| (i * 7) % data.train.len()).collect();
    let aug = Some(&r.data.augment);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (x, y) = make_batch(
        &data.train,
        &idx,
        &norm,
        aug.map(|a| (a, &mut rng)),
        &Device::Cpu,
    )
    .unwrap();
    let after: u64 = rng.random();
    for n in [2, 4] {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for k in 0..n {
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let part = 32 * k / n..32 * (k + 1) / n;
            let (xp, yp) = make_batch_part(
                &data.train,
                &idx,
                part,
                &norm,
                aug.map(|a| (a, &mut rng)),
                &Device::Cpu,
            )
            .unwrap();
            assert_eq!(
                rng.random::<u64>(),
                after,
                "the RNG ends where the whole batch leaves it"
            );
            xs.push(xp);
            ys.push(yp);
        }
        let xc = candle_core::Tensor::cat(&xs, 0).unwrap();
        let yc = candle_core::Tensor::cat(&ys, 0).unwrap();
        assert_eq!(
            xc.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert_eq!(yc.to_vec1::<u32>().unwrap(), y.to_vec1::<u32>().unwrap());
    }
}

#[test]
fn every_rank_samples_the_same_subnets_each_step() {
    // Each rank draws its shard's batch from the step's RNG (seed, step),
    // then the step's subnets: the same subnets on every rank, at any
    // number of ranks.
    let mut r = small_recipe(Path::new("unused"));
    r.sampler = vitnas::train::recipe::SamplerConfig::Sandwich { num_random: 2 };
    let space = vitnas::Space::from_file(&r.space).unwrap();
    let data = train::load_train_val(&r, &space).unwrap();
    let sampler = sampler::from_config(&r.sampler, &space).unwrap();
    let idx: Vec<usize> = (0..32).collect();
    for step in 0..20 {
        let plan_of = |part: std::ops::Range<usize>| {
            let mut rng = step_rng(r.seed, step);
            make_batch_part(
                &data.train,
                &idx,
                part,
                &data.norm,
                Some((&r.data.augment, &mut rng)),
                &Device::Cpu,
            )
            .unwrap();
            sampler.plan(&space, step, &mut rng).archs
        };
        let one = plan_of(0..32);
        assert_eq!(one.len(), 4);
        for n in [2, 4, 8] {
            for k in 0..n {
                assert_eq!(
                    plan_of(32 * k / n..32 * (k + 1) / n),
                    one,
                    "step {step}, rank {k} of {n}"
                );
            }
        }
    }
}

#[test]
fn bucketed_all_reduce_sums_every_value_once_for_any_bucket_size() {
    let lens = [5usize, 1, 17, 0, 9, 3];
    for bucket in [0usize, 1, 2, 4, 7, 16, 100] {
        let out = on_ranks(3, |c| {
            let mut bufs: Vec<Vec<f32>> = lens
                .iter()
                .enumerate()
                .map(|(t, &n)| {
                    (0..n)
                        .map(|i| ((c.rank() + 1) * 1000 + t * 100 + i) as f32)
                        .collect()
                })
                .collect();
            dist::all_reduce_buffers(c, &mut bufs, bucket).unwrap();
            let mut mean = bufs.clone();
            dist::all_reduce_mean(c, &mut mean, bucket).unwrap();
            (bufs, mean)
        });
        for (bufs, mean) in out {
            for (t, b) in bufs.iter().enumerate() {
                assert_eq!(b.len(), lens[t]);
                for (i, &x) in b.iter().enumerate() {
                    let want = (6000 + 3 * (t * 100 + i)) as f32;
                    assert_eq!(x, want, "bucket {bucket}, tensor {t}, value {i}");
                    // The sums, summed again and divided by 3: the sums.
                    assert_eq!(mean[t][i], want, "bucket {bucket}: mean");
                }
            }
        }
    }
}

#[test]
fn shared_work_is_done_once_per_item_and_every_rank_gets_every_result() {
    let counts = on_ranks(3, |c| {
        let mut mine = Vec::new();
        let out = dist::share(c, 7, 2, |i| {
            mine.push(i);
            Ok((i != 5).then(|| vec![i as f64, -(i as f64) * 0.5]))
        })
        .unwrap();
        (mine, out)
    });
    let mut done: Vec<usize> = counts.iter().flat_map(|(m, _)| m.clone()).collect();
    done.sort();
    assert_eq!(done, (0..7).collect::<Vec<_>>());
    for (rank, (mine, out)) in counts.iter().enumerate() {
        assert!(mine.iter().all(|i| i % 3 == rank));
        for (i, v) in out.iter().enumerate() {
            match i {
                5 => assert!(v.is_none(), "an item not done stays missing"),
                _ => assert_eq!(v.as_deref(), Some(&[i as f64, -(i as f64) * 0.5][..])),
            }
        }
    }
}

#[test]
fn ranks_holding_different_values_all_refuse_naming_the_first_that_differs() {
    let out = on_ranks(3, |c| {
        let mine: &[u8] = if c.rank() == 2 {
            b"recipe B"
        } else {
            b"recipe A"
        };
        dist::check_same(c, "recipe", mine, "run the same recipe").map_err(|e| e.to_string())
    });
    for r in out {
        let e = r.unwrap_err();
        assert!(
            e.contains("rank 2 of 3 holds a different recipe") && e.contains("run the same recipe"),
            "{e}"
        );
    }
    let same = on_ranks(3, |c| dist::check_same(c, "recipe", b"A", "").is_ok());
    assert!(same.iter().all(|&ok| ok));
}
