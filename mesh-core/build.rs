//! Compiles the protobuf schemas with protox (pure Rust, no protoc needed) and prost.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/zds.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
