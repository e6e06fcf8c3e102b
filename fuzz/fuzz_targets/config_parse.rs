//! Bytes as the text of a config file: parsing and validation must return
//! a config or problems, never panic, and whatever they accept must describe
//! itself and build a DNS zone.

#![no_main]

use highlander::config::{Config, describe};
use highlander::dns::ZoneView;
use highlander::model::AppliedState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(&highlander_fuzz::config_file(), text) {
        let _ = describe(&config);
        let _ = ZoneView::build(&config, &AppliedState::default(), true);
    }
});
