//! The whole pipeline (decode, engine, lifecycle, records) on arbitrary record sequences:
//! length-prefixed records, each a kernel event or an agent record, or garbage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use traceid::pipeline::{Pipeline, PipelineConfig};
use traceid_fuzz::records;

fuzz_target!(|data: &[u8]| {
    let mut pipeline = Pipeline::new(PipelineConfig::default());
    let mut emitted = 0usize;
    let mut sink = |_: &traceid::record::Record| emitted += 1;
    for rec in records(data) {
        pipeline.process(rec, &mut sink);
    }
    pipeline.finish(&mut sink);
    let _ = pipeline.time_wait_report();
});
