//! The NOR flash log under any sequence of writes, removals, reboots,
//! power cuts and byte damage: starting, reading and writing never panic
//! or hang; until the first damage every record reads as its last
//! completed write (or, for a write a cut interrupted, as before or
//! after it); a write that succeeds always reads back. Each op is 3 bytes.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use spime::device::storage::{NorStorage, SimFlash, Storage};

/// Four sectors of 512 bytes: four records of up to 100 bytes always fit.
type Flash = SimFlash<2048, 512>;

fn open(f: &mut Flash) -> Option<NorStorage<&mut Flash>> {
    NorStorage::new(f, 0, 4, 4, 100).ok()
}

fuzz_target!(|data: &[u8]| {
    let mut flash = Flash::new();
    let mut model: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    let mut damaged = false;
    let mut buf = [0u8; 100];
    for op in data.chunks_exact(3) {
        let (kind, id, arg) = (op[0] % 6, u16::from(op[1] % 5), op[2]);
        let Some(mut s) = open(&mut flash) else {
            flash.power_on();
            continue;
        };
        match kind {
            0 | 1 => {
                let v = vec![arg; usize::from(arg) % 101];
                match s.write(id, &v) {
                    Ok(()) => {
                        assert_eq!(s.read(id, &mut buf), Ok(Some(&v[..])), "a write reads back");
                        model.insert(id, v);
                    }
                    Err(_) if id >= 4 => {}
                    Err(_) => {
                        assert!(damaged || s.flash().is_cut(), "a write failed without a cut or damage");
                        drop(s);
                        flash.power_on();
                        if let Some(mut s) = open(&mut flash) {
                            let got = s.read(id, &mut buf).ok().flatten().map(<[u8]>::to_vec);
                            assert!(damaged || got == model.get(&id).cloned() || got.as_deref() == Some(&v[..]));
                            match got {
                                Some(g) => model.insert(id, g),
                                None => model.remove(&id),
                            };
                        }
                    }
                }
            }
            2 => {
                if s.remove(id).is_ok() {
                    model.remove(&id);
                } else {
                    // a cut removal: the record is gone or as it was
                    drop(s);
                    flash.power_on();
                    if let Some(mut s) = open(&mut flash) {
                        match s.read(id, &mut buf).ok().flatten() {
                            Some(g) => model.insert(id, g.to_vec()),
                            None => model.remove(&id),
                        };
                    }
                }
            }
            3 => {
                drop(s);
                flash.power_on();
                flash.cut_after(u32::from(arg % 16));
            }
            4 => {
                drop(s);
                let at = usize::from(op[1]) * 8 + usize::from(arg) % 8;
                flash.decay(u32::try_from(at).unwrap_or(0), 1 + u32::from(arg % 3));
                damaged = true;
            }
            _ => drop(s),
        }
        if !damaged && !flash.is_cut() {
            if let Some(mut s) = open(&mut flash) {
                for id in 0..4u16 {
                    let got = s.read(id, &mut buf).ok().flatten().map(<[u8]>::to_vec);
                    assert_eq!(got, model.get(&id).cloned(), "record {id}");
                }
            }
        }
    }
});
