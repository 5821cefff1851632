//! The SIMD level vitnas's own vector math runs at, chosen once per process.
//!
//! The vector math (`exp`, GELU, softmax rows, layer-norm rows, AdamW) is
//! written once against [`pulp`]'s portable `Simd` trait and compiled for
//! every level below; the level is picked at run time from what the CPU
//! supports. The matrix products go through the `gemm` crate, which does
//! its own run-time dispatch over the same levels.
//!
//! `VITNAS_SIMD=avx512|avx2|neon|scalar` forces a level (for tests and
//! benchmarks); a level the CPU or the build lacks is refused with a
//! message. Building without the default `avx512` feature leaves out the
//! AVX-512 code of both vitnas and gemm, so an AVX-512 machine can measure
//! what an AVX2 machine runs.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that forces a level.
pub const ENV: &str = "VITNAS_SIMD";

/// A SIMD instruction-set level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// x86-64-v4: AVX-512F/BW/CD/DQ/VL, 16 f32 lanes.
    Avx512,
    /// x86-64-v3: AVX2 + FMA, 8 f32 lanes.
    Avx2,
    /// aarch64 NEON, 4 f32 lanes.
    Neon,
    /// No vector instructions: one lane, same formulas.
    Scalar,
}

impl Level {
    /// The spelling `VITNAS_SIMD` takes.
    pub fn name(self) -> &'static str {
        match self {
            Level::Avx512 => "avx512",
            Level::Avx2 => "avx2",
            Level::Neon => "neon",
            Level::Scalar => "scalar",
        }
    }

    /// Parses a `VITNAS_SIMD` value.
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" | "x86-v4" => Some(Level::Avx512),
            "avx2" | "x86-v3" => Some(Level::Avx2),
            "neon" => Some(Level::Neon),
            "scalar" | "none" => Some(Level::Scalar),
            _ => None,
        }
    }

    /// Every level this build on this CPU can run, widest first; the first
    /// is the default.
    pub fn available() -> Vec<Level> {
        [Level::Avx512, Level::Avx2, Level::Neon, Level::Scalar]
            .into_iter()
            .filter(|l| Isa::new(*l).is_some())
            .collect()
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A level's token: holding one proves the CPU supports it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Isa {
    #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
    V4(pulp::x86::V4),
    #[cfg(target_arch = "x86_64")]
    V3(pulp::x86::V3),
    #[cfg(target_arch = "aarch64")]
    Neon(pulp::aarch64::Neon),
    Scalar(pulp::Scalar),
}

impl Isa {
    /// The token of `level`, if this build and CPU have it.
    pub(crate) fn new(level: Level) -> Option<Isa> {
        match level {
            #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
            Level::Avx512 => pulp::x86::V4::try_new().map(Isa::V4),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => pulp::x86::V3::try_new().map(Isa::V3),
            #[cfg(target_arch = "aarch64")]
            Level::Neon => pulp::aarch64::Neon::try_new().map(Isa::Neon),
            Level::Scalar => Some(Isa::Scalar(pulp::Scalar::new())),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    pub(crate) fn level(self) -> Level {
        match self {
            #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
            Isa::V4(_) => Level::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::V3(_) => Level::Avx2,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(_) => Level::Neon,
            Isa::Scalar(_) => Level::Scalar,
        }
    }

    /// Runs `op` compiled for this level.
    #[inline]
    pub(crate) fn run<Op: pulp::WithSimd>(self, op: Op) -> Op::Output {
        use pulp::Simd;
        match self {
            #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
            Isa::V4(s) => Simd::vectorize(s, op),
            #[cfg(target_arch = "x86_64")]
            Isa::V3(s) => Simd::vectorize(s, op),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(s) => Simd::vectorize(s, op),
            Isa::Scalar(s) => Simd::vectorize(s, op),
        }
    }
}

static ISA: OnceLock<Isa> = OnceLock::new();

/// The token of the process's level: `VITNAS_SIMD` if set, else the widest
/// available. Panics once, at first use, on a `VITNAS_SIMD` that names an
/// unknown level or one this build or CPU lacks ([`check_env`] reports the
/// same as an error, and the binary calls it first).
pub(crate) fn isa() -> Isa {
    *ISA.get_or_init(|| match from_env() {
        Ok(isa) => isa,
        Err(e) => panic!("{e}"),
    })
}

fn from_env() -> std::result::Result<Isa, String> {
    match std::env::var(ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let level = Level::parse(&v).ok_or_else(|| {
                format!("{ENV}={v:?} is not a SIMD level: use avx512, avx2, neon or scalar")
            })?;
            Isa::new(level).ok_or_else(|| {
                let have: Vec<&str> = Level::available().iter().map(|l| l.name()).collect();
                let build = if level == Level::Avx512 && !cfg!(feature = "avx512") {
                    " (this build leaves out AVX-512: build with the default `avx512` feature)"
                } else {
                    ""
                };
                format!(
                    "{ENV}={v}: this CPU or build cannot run {level}{build}; available: {}",
                    have.join(", ")
                )
            })
        }
        _ => Ok(Isa::new(Level::available()[0]).expect("the widest available level exists")),
    }
}

/// Checks `VITNAS_SIMD`, so that a bad value is an error rather than a
/// panic at the first vector operation.
pub fn check_env() -> std::result::Result<Level, String> {
    from_env().map(Isa::level)
}

/// The level the vector math of this process runs at.
pub fn level() -> Level {
    isa().level()
}

/// Whether gemm's AVX-512 kernels are compiled in (the `avx512` feature).
pub const GEMM_AVX512: bool = cfg!(feature = "avx512");

/// Whether gemm runs its AVX-512 kernels here: compiled in, and the CPU has
/// AVX-512F (gemm's own runtime choice).
pub fn gemm_avx512_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        GEMM_AVX512 && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_scalar_is_always_there() {
        for l in [Level::Avx512, Level::Avx2, Level::Neon, Level::Scalar] {
            assert_eq!(Level::parse(l.name()), Some(l));
        }
        assert_eq!(Level::parse("sse9"), None);
        let have = Level::available();
        assert_eq!(have.last(), Some(&Level::Scalar));
        for l in have {
            assert_eq!(Isa::new(l).unwrap().level(), l);
        }
    }
}
