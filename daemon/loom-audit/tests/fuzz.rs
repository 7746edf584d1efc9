//! Property tests of the ring-buffer decoder: a record of any length, any kind byte and any
//! length field (pointing past its array or not) decodes to an event or a `DecodeError`,
//! never a panic; and whatever decodes survives the journald encoding and the JSON of the
//! NDJSON sink and index unchanged. Also the `--since` a client sends and the `[audit]` table.

use loom_audit::event::{DecodeError, EventKind, decode};
use loom_audit::journal::{decode_entry, encode_entry, event_fields};
use loom_audit::layout::{self, COMM_LEN, EXEC_ARGV_LEN, PATH_LEN, kind};
use loom_audit::{AuditConfig, AuditEvent, EventDetail, parse_since};
use proptest::prelude::*;
use proptest::sample::select;
use support::cases;

/// The helpers every crate's property tests share, defined once in loom-core's.
#[path = "../../loom-core/tests/fuzz/support.rs"]
mod support;

fn size_of_struct(name: &str) -> usize {
    layout::layout_table().iter().find(|f| f.strukt == name && f.field.is_empty()).map(|f| f.size).unwrap()
}

fn offset(strukt: &str, field: &str) -> usize {
    layout::layout_table().iter().find(|f| f.strukt == strukt && f.field == field).map(|f| f.offset).unwrap()
}

/// The C struct a record of this kind must fill.
fn struct_of(raw: u32) -> &'static str {
    match raw {
        kind::EXEC => "loom_ev_exec",
        kind::CONNECT | kind::BIND => "loom_ev_net",
        kind::OPEN | kind::UNLINK | kind::UMOUNT | kind::MODULE => "loom_ev_path",
        kind::RENAME | kind::MOUNT => "loom_ev_path2",
        _ => "loom_ev_args",
    }
}

/// The length fields of each struct: the decoder must clamp every one of them.
const LEN_FIELDS: &[(&str, &str)] = &[
    ("loom_ev_exec", "filename_len"),
    ("loom_ev_exec", "argv_len"),
    ("loom_ev_path", "path_len"),
    ("loom_ev_path2", "path_len"),
    ("loom_ev_path2", "path2_len"),
    ("loom_ev_path2", "aux_len"),
    ("loom_ev_net", "addrlen"),
];

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    if let Some(dst) = buf.get_mut(at..at + 4) {
        dst.copy_from_slice(&v.to_ne_bytes());
    }
}

/// A record with a chosen kind and op, of a length near the sizes that matter, with random
/// content and its length fields set to small, boundary or huge values.
fn record() -> impl Strategy<Value = Vec<u8>> {
    let raw_kind = prop_oneof![4 => 1..=16u32, 1 => Just(0u32), 1 => Just(layout::KIND_MAX), 1 => any::<u32>()];
    let op = prop_oneof![0..40u32, any::<u32>()];
    let len_value =
        prop_oneof![0..16u32, select(vec![107, 108, 109, 110, 511, 512, 513, 2047, 2048, 2049]), any::<u32>()];
    (raw_kind, op, any::<prop::sample::Index>(), 0..4096usize, any::<u16>(), prop::collection::vec(len_value, 7))
        .prop_flat_map(|(k, op, pick, extra, family, lens)| {
            let full = size_of_struct(struct_of(k));
            let hdr = size_of_struct("loom_hdr");
            // Whole records most of the time, so that every kind's decoding runs.
            let lengths = [0, hdr - 1, hdr, full - 1, full, full, full, full, full + extra % 64, extra % (full + 64)];
            let len = lengths[pick.index(lengths.len())];
            prop::collection::vec(any::<u8>(), len).prop_map(move |mut buf| {
                put_u32(&mut buf, offset("loom_hdr", "kind"), k);
                put_u32(&mut buf, offset("loom_hdr", "op"), op);
                let strukt = struct_of(k);
                for ((s, field), v) in LEN_FIELDS.iter().zip(&lens) {
                    if *s == strukt {
                        put_u32(&mut buf, offset(s, field), *v);
                    }
                }
                if strukt == "loom_ev_net" {
                    // Mostly the families that have their own decoding.
                    let f = [1, 2, 10, family][usize::from(family % 4)];
                    let at = offset("loom_ev_net", "family");
                    if let Some(dst) = buf.get_mut(at..at + 2) {
                        dst.copy_from_slice(&f.to_ne_bytes());
                    }
                }
                buf
            })
        })
}

fn weaver(id: u64) -> String {
    format!("w{id}")
}

/// Text from a fixed-size kernel array: each byte is at most `\xNN` (4 chars).
fn bounded(s: &str, array: usize) -> bool {
    s.len() <= 4 * array
}

fn check(buf: &[u8], boot_offset: i64) -> Result<(), TestCaseError> {
    let hdr_size = size_of_struct("loom_hdr");
    match decode(buf, weaver, boot_offset) {
        Ok(ev) => {
            let at = offset("loom_hdr", "kind");
            let raw = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
            prop_assert_eq!(ev.kind().raw(), raw);
            prop_assert!(buf.len() >= size_of_struct(struct_of(raw)), "decoded a record shorter than its struct");
            check_event(&ev)?;
        }
        Err(DecodeError::TooShort { kind, len, need }) => {
            prop_assert_eq!(len, buf.len());
            prop_assert!(need > len);
            if len >= hdr_size {
                prop_assert_eq!(need, size_of_struct(struct_of(kind)));
            }
        }
        Err(DecodeError::UnknownKind(k)) => {
            prop_assert!(buf.len() >= hdr_size);
            prop_assert!(EventKind::from_raw(k).is_none());
        }
    }
    Ok(())
}

fn check_event(ev: &AuditEvent) -> Result<(), TestCaseError> {
    prop_assert!(bounded(&ev.comm, COMM_LEN));
    match &ev.detail {
        EventDetail::Exec { path, argv, .. } => {
            prop_assert!(bounded(path, layout::EXEC_FILENAME_LEN));
            prop_assert!(argv.iter().map(|a| a.len() + 1).sum::<usize>() <= 4 * EXEC_ARGV_LEN + 1);
        }
        EventDetail::Open { path, .. } | EventDetail::Unlink { path, .. } | EventDetail::Umount { path, .. } => {
            prop_assert!(bounded(path, PATH_LEN));
        }
        EventDetail::Rename { path, new_path, .. } => {
            prop_assert!(bounded(path, PATH_LEN) && bounded(new_path, PATH_LEN));
        }
        EventDetail::Mount { source, path, fstype, .. } => {
            prop_assert!(bounded(source, PATH_LEN) && bounded(path, PATH_LEN) && bounded(fstype, layout::AUX_LEN));
        }
        EventDetail::Connect(n) | EventDetail::Bind(n) => {
            prop_assert!(n.unix_path.as_deref().is_none_or(|p| p.len() <= 1 + 4 * layout::UNIX_PATH_LEN));
        }
        _ => {}
    }
    // The journald datagram carries hostile text (paths, argv) intact and unambiguous.
    let fields = event_fields(ev);
    let datagram = encode_entry(&fields).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back = decode_entry(&datagram).ok_or_else(|| TestCaseError::fail("the datagram does not decode"))?;
    let sent: Vec<(String, Vec<u8>)> = fields.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
    prop_assert_eq!(back, sent);
    // The NDJSON sink and the index store events as JSON.
    let json = serde_json::to_string(ev).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let parsed: AuditEvent = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
    prop_assert_eq!(&parsed, ev);
    Ok(())
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn any_bytes_decode_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..3000), boot in any::<i64>()) {
        check(&bytes, boot)?;
    }

    #[test]
    fn records_of_every_kind_with_any_lengths(buf in record(), boot in any::<i64>()) {
        check(&buf, boot)?;
    }
}

#[test]
fn journal_entries_decode_or_refuse_any_bytes() {
    let mut runner = proptest::test_runner::TestRunner::new(cases(1000));
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
            if let Some(fields) = decode_entry(&bytes) {
                prop_assert!(fields.iter().all(|(_, v)| v.len() <= bytes.len()));
            }
            Ok(())
        })
        .unwrap();
}

proptest! {
    #![proptest_config(cases(2000))]

    /// `loom audit --since` as a client sends it: a time, `@SECS` or `10m`, or anything.
    #[test]
    fn since_parses_or_refuses(
        s in prop_oneof![
            any::<String>(),
            "-?[0-9]{1,20}-[0-9]{1,3}-[0-9]{1,3}([T ]-?[0-9]{1,20}:-?[0-9]{1,20}(:-?[0-9]{1,20})?(\\.[0-9]{0,12})?)?Z?",
            "@?[0-9]{0,22}[smhdx]?",
        ],
        now in any::<u64>(),
    ) {
        if let Ok(ns) = parse_since(&s, now) {
            // A relative time is never after now; an absolute one is a real UTC time.
            let relative = s.trim().ends_with(['s', 'm', 'h', 'd']) && !s.contains(['-', ':']);
            prop_assert!(!relative || ns <= now, "{s:?} -> {ns}");
        }
    }

    #[test]
    fn audit_tables_parse_or_refuse(text in prop_oneof![
        any::<String>(),
        prop::collection::btree_map(
            select(vec!["enabled", "required", "sink", "journal_socket", "ndjson_file", "index", "ring_buffer_bytes", "queue_capacity", "max_weavers", "extra"]),
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                "\\PC{0,12}".prop_map(|s| toml::Value::String(s).to_string()),
                Just("[\"exec\", \"nope\"]".to_string()),
                Just("true".to_string()),
            ],
            0..5,
        )
        .prop_map(|m| m.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>()),
    ]) {
        if let Ok(table) = text.parse::<toml::Table>() {
            let _ = AuditConfig::from_toml(&table);
        }
    }
}

#[test]
fn since_with_year_9223372036854775807_is_refused_not_overflowed() {
    for s in ["9223372036854775807-01-01T00:00:00Z", "2024-01-01T-9223372036854775808:00:00Z", "2024-01-01T00:00:-1Z"] {
        assert!(parse_since(s, 0).is_err(), "{s}");
    }
    assert_eq!(parse_since("1970-01-02T00:00:00Z", 0), Ok(86_400_000_000_000));
}
