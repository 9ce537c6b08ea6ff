//! Compiles proto/ladle/v1 with protox, so no protoc has to be installed anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=ladle");
    let files = [
        "ladle/v1/common.proto",
        "ladle/v1/tasks.proto",
        "ladle/v1/agent.proto",
        "ladle/v1/driver.proto",
        "ladle/v1/admin.proto",
    ];
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Task payloads and results pass through the scheduler untouched: share, never copy.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
