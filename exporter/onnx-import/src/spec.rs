// The model exported at build time and rebuilt by the test: a non-default CancerNet.
pub const SEED: u64 = 5;

pub fn config() -> models::CancerNetConfig {
    models::CancerNetConfig::default()
        .with_input_size(40)
        .with_widths(vec![8, 16])
        .with_depths(vec![1, 2])
        .with_dense(32)
}
