//! Small helpers the command line, the worker and the app share: error messages, device
//! names, this process's memory.

use anyhow::Context;
use candle_core::Device;

use crate::model::load;

/// The error and its causes on one line, candle errors without their backtraces.
pub fn error_chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| match cause.downcast_ref::<candle_core::Error>() {
            Some(c) => load::error_message(c),
            None => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// Parses `--device`.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            Device::new_cuda(0).context("opening CUDA device 0 (built with --features cuda?)")
        }
        "metal" => {
            Device::new_metal(0).context("opening the Metal device (built with --features metal?)")
        }
        other => anyhow::bail!("unknown device '{other}' (use cpu, cuda or metal)"),
    }
}

/// Parses a precision name (`--dtype`, the editor's *Precision*): the weights' dtype on
/// `device`, "auto" being [`auto_dtype`]'s.
pub fn parse_dtype(name: &str, device: &Device) -> anyhow::Result<candle_core::DType> {
    use candle_core::DType;
    match name {
        "auto" => Ok(auto_dtype(device)),
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => anyhow::bail!("unknown dtype '{other}' (use auto, f32, f16 or bf16)"),
    }
}

/// The default precision: bf16 on a CPU with AVX512-BF16 (there its products run on bf16 dot
/// products: an SD 1.5 step in 0.48-0.64 of the f32 time, the output within half a level of
/// f32's on average; docs/speed.md), f32 on other CPUs and on GPUs.
pub fn auto_dtype(device: &Device) -> candle_core::DType {
    use crate::model::kernels::bf16::Bf16Kernel;
    if device.is_cpu() && Bf16Kernel::detect() == Bf16Kernel::Avx512Bf16 {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), when known.
pub fn peak_memory_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Resident memory of this process now, in bytes (Linux `VmRSS`), when known.
pub fn memory_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The number of compute threads: `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the
/// number of cores.
pub fn compute_threads() -> usize {
    ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|v| {
            std::env::var(v)
                .ok()?
                .parse()
                .ok()
                .filter(|&n: &usize| n > 0)
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Makes every pool of the process use [`compute_threads`]. candle 0.11 sizes its element-wise
/// pool by `CANDLE_NUM_THREADS` but its matrix products (and this crate's rayon kernels) by
/// rayon's pool, `RAYON_NUM_THREADS`, all cores by default: `CANDLE_NUM_THREADS=1` alone still
/// split every matrix product over all cores. Call before any other thread starts (it sets an
/// environment variable).
pub fn unify_thread_counts() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        if let Ok(n) = std::env::var("CANDLE_NUM_THREADS") {
            std::env::set_var("RAYON_NUM_THREADS", n);
        }
    }
}

/// Runs `f` on a thread of a fresh rayon pool of [`compute_threads`] threads and waits for it.
/// A parallel loop started from outside a pool hands its work to the pool's threads and sleeps
/// until they finish (a futex round trip per kernel: ~12% of a one-thread training step in a
/// profile); started from a pool thread, it runs there, inline when the pool has one thread.
pub fn in_compute_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new()
        .num_threads(compute_threads())
        .thread_name(|i| format!("instructdiffusion-compute-{i}"))
        // The main thread's stack: backpropagation walks the graph recursively.
        .stack_size(64 << 20)
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}
