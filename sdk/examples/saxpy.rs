//! SAXPY (y ← a·x + y) over a large vector on the cluster's GPUs, with a CUDA kernel compiled at
//! run time by NVRTC, checked against the same sums computed on this machine's CPU.
//!
//! cargo run --release -p ladle --example saxpy [-- ELEMENTS]
//!
//! Each task owns one GPU (`#[ladle::task(gpu)]`), builds its slice of x and y, runs the kernel
//! there and returns a checksum of its slice of y. Without a GPU agent it says so and stops.

use std::time::Instant;

use ladle::cudarc::{
    driver::{LaunchConfig, PushKernelArg},
    nvrtc,
};
use serde::{Deserialize, Serialize};

const KERNEL: &str = r#"
extern "C" __global__ void saxpy(float a, const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = a * x[i] + y[i];
    }
}
"#;

const A: f32 = 2.5;
/// Elements per task.
const CHUNK: u64 = 1 << 22;

/// The inputs at index `i`: cheap to rebuild anywhere, so only ranges travel.
fn x(i: u64) -> f32 {
    (i % 1024) as f32 * 0.25
}
fn y(i: u64) -> f32 {
    (i % 7) as f32 - 3.0
}

#[derive(Serialize, Deserialize)]
struct Slice {
    start: u64,
    len: u64,
}

#[derive(Serialize, Deserialize)]
struct Done {
    checksum: f64,
    device: String,
    kernel_ms: f64,
}

#[ladle::task(gpu)]
fn saxpy_on_gpu(slice: Slice) -> Result<Done, String> {
    let ctx = ladle::gpu::context().map_err(|e| e.to_string())?;
    // SAFETY: only tries to load the library.
    if !unsafe { nvrtc::sys::is_culib_present() } {
        return Err("NVRTC (libnvrtc) is not installed on this agent".into());
    }
    let ptx = nvrtc::compile_ptx(KERNEL).map_err(|e| format!("NVRTC: {e}"))?;
    let module = ctx.load_module(ptx).map_err(|e| e.to_string())?;
    let saxpy = module.load_function("saxpy").map_err(|e| e.to_string())?;
    let stream = ctx.default_stream();

    let range = slice.start..slice.start + slice.len;
    let xs: Vec<f32> = range.clone().map(x).collect();
    let ys: Vec<f32> = range.map(y).collect();
    let n = i32::try_from(slice.len).map_err(|_| "slice too long for one launch")?;
    let run = || -> Result<(Vec<f32>, f64), ladle::cudarc::driver::DriverError> {
        let x_dev = stream.clone_htod(&xs)?;
        let mut y_dev = stream.clone_htod(&ys)?;
        let started = Instant::now();
        let mut launch = stream.launch_builder(&saxpy);
        launch.arg(&A).arg(&x_dev).arg(&mut y_dev).arg(&n);
        // SAFETY: the kernel's parameters are (float, const float*, float*, int), as pushed,
        // and both buffers hold n elements.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }?;
        stream.synchronize()?;
        let kernel_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok((stream.clone_dtoh(&y_dev)?, kernel_ms))
    };
    // A CUDA failure (out of device memory, a bad launch) carries the error's name.
    let (out, kernel_ms) = run().map_err(|e| format!("CUDA: {e}"))?;
    Ok(Done {
        checksum: out.iter().map(|&v| f64::from(v)).sum(),
        device: ctx.name().map_err(|e| e.to_string())?,
        kernel_ms,
    })
}

#[ladle::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let elements: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1 << 25,
    };
    let cluster = ladle::Cluster::from_env().await?;
    if cluster.gpu_slots() == 0 {
        let plural = |n: u32, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        eprintln!(
            "saxpy: no GPU agent is available in this cluster ({}, {}, 0 GPU slots); run it \
             where an agent has a CUDA GPU",
            plural(cluster.agents(), "agent"),
            plural(cluster.slots(), "CPU slot")
        );
        // Dropped first: an embedded cluster removes its temporary directory as it goes.
        drop(cluster);
        std::process::exit(1);
    }
    let slices: Vec<Slice> = (0..elements)
        .step_by(CHUNK as usize)
        .map(|start| Slice {
            start,
            len: CHUNK.min(elements - start),
        })
        .collect();
    let started = Instant::now();
    let done = cluster.map(saxpy_on_gpu, slices).await?;
    let on_gpus = started.elapsed();
    let gpu_sum: f64 = done.iter().map(|d| d.checksum).sum();

    let started = Instant::now();
    let cpu_sum: f64 = (0..elements).map(|i| f64::from(A * x(i) + y(i))).sum();
    let on_cpu = started.elapsed();

    let mut devices: Vec<&str> = done.iter().map(|d| d.device.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    let kernel_ms: f64 = done.iter().map(|d| d.kernel_ms).sum();
    println!(
        "saxpy over {elements} elements in {} tasks on {}: kernels {kernel_ms:.2} ms in all, \
         job {:.1} ms (CPU alone {:.1} ms)",
        done.len(),
        devices.join(", "),
        on_gpus.as_secs_f64() * 1e3,
        on_cpu.as_secs_f64() * 1e3,
    );
    // The GPU may fuse a·x + y into one rounding where the CPU rounds twice: allow for that.
    let relative = (gpu_sum - cpu_sum).abs() / cpu_sum.abs().max(1.0);
    if relative < 1e-6 {
        println!("checksum {gpu_sum:.1} matches the CPU ({cpu_sum:.1})");
        Ok(())
    } else {
        Err(format!("checksum {gpu_sum} differs from the CPU's {cpu_sum} ({relative:e})").into())
    }
}
