//! Exports a seeded random CancerNet with the project's exporter, then generates burn code for it
//! with burn-onnx (burn's own ONNX importer).

#[path = "src/spec.rs"]
mod spec;

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let run = out.join("run");
    let _ = std::fs::remove_dir_all(&run);
    trainer::checkpoint::write_random_run(&run, &spec::config(), spec::SEED).expect("random run");
    let loaded =
        exporter::export::load(&run, Some(exporter::export::Checkpoint::Best)).expect("load run");
    let onnx = out.join("cancernet.onnx");
    std::fs::write(
        &onnx,
        exporter::export::to_onnx(&loaded, true, false).expect("export"),
    )
    .expect("write onnx");
    burn_onnx::ModelGen::new()
        .input(onnx.to_str().expect("utf-8 path"))
        .out_dir("model/")
        .run_from_script();
    println!("cargo:rerun-if-changed=src/spec.rs");
}
