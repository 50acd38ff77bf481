//! Event derivation from arbitrary JSON: two states of a flag, any mutation. Never panics, only
//! known event names, and no change gives no event.
#![no_main]
use flaghook::events::{derive, diff, flagr_notice, EVENT_NAMES};
use flaghook::flagr::model::Flag;
use flaghook::flagr::Mutation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0xff);
    let (a, b) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let parse = |x: &[u8]| serde_json::from_slice::<Flag>(x).ok();
    let (Some(before), Some(after)) = (parse(a), parse(b)) else {
        return;
    };
    assert!(diff(&before, &before).is_empty());
    let muts = [
        Mutation::CreateFlag,
        Mutation::PutFlag { flag: 1 },
        Mutation::DeleteFlag { flag: 1 },
        Mutation::RestoreFlag { flag: 1 },
        Mutation::DuplicateFlag { flag: 1 },
        Mutation::SetEnabled { flag: 1 },
        Mutation::PutVariant {
            flag: 1,
            variant: 2,
        },
        Mutation::ReorderSegments { flag: 1 },
        Mutation::PutDistributions {
            flag: 1,
            segment: 3,
        },
    ];
    let response = serde_json::from_slice::<serde_json::Value>(b).ok();
    for m in muts {
        for d in derive(&m, Some(&before), &after)
            .iter()
            .chain(derive(&m, None, &after).iter())
        {
            assert!(EVENT_NAMES.contains(&d.event), "{}", d.event);
        }
        let _ = flagr_notice(&m, &after, response.as_ref());
    }
});
