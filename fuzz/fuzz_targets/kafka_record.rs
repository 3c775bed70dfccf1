//! Kafka records in either mode (`kafka::decode`: header names and values,
//! key and value of any bytes, a missing value), and `kafka::encode` of any
//! event. The first input byte picks the mode (see `fuzz_checks`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::target("kafka_record")(data));
