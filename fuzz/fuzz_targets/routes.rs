//! The route table on arbitrary methods and paths: never panics, and a mutation's path ids are
//! in the path as Flagr's router cleans it.
#![no_main]
use flaghook::flagr::routes::cleaned;
use flaghook::flagr::{Route, RouteTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    let method: http::Method = methods[m as usize % methods.len()].parse().unwrap();
    let path = String::from_utf8_lossy(rest);
    let clean = cleaned(&path);
    for prefix in ["", "/flagr"] {
        let route = RouteTable::new(prefix).classify(&method, &path);
        if let Route::Mutation(mu) = route {
            if let Some(id) = mu.path_flag() {
                assert!(clean.contains(&id.to_string()));
                assert!(id > 0);
            }
            assert!(clean.starts_with(&format!("{prefix}/api/v1/flags")));
        }
    }
});
