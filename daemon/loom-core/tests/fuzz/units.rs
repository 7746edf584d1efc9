//! Sizes, spans and CPU counts: parsed or refused, never out of range.

use super::*;

pub(crate) fn size_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t]?[-+]?[0-9]{0,24}[kKmMgGtTpPxX.]?[bB]?[ \n]?",
        (any::<u64>(), select(vec!["", "K", "M", "G", "T", "B", "KB", "gb"])).prop_map(|(n, s)| format!("{n}{s}")),
    ]
}

pub(crate) fn span_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t]?[-+]?[0-9]{0,24}[smhdwéS]?[ \n]?",
        (any::<u64>(), select(vec!["", "s", "m", "h", "d"])).prop_map(|(n, s)| format!("{n}{s}")),
    ]
}

fn cpu_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-+]?[0-9]{0,6}(\\.[0-9]{0,8})?(e[-+]?[0-9]{1,3})?",
        any::<f64>().prop_map(|f| f.to_string()),
        select(vec!["NaN", "inf", "-inf", "infinity", "1e308", "1e-308", "1024.0004", "1024.0005", "0.0005", "0.0004"])
            .prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn sizes_parse_or_refuse(s in size_text()) {
        if let Ok(b) = s.parse::<ByteSize>() {
            prop_assert!(b.0 > 0);
            prop_assert_eq!(b.to_string().parse::<ByteSize>(), Ok(b));
        }
    }

    #[test]
    fn spans_parse_or_refuse(s in span_text()) {
        if let Ok(t) = s.parse::<Span>() {
            prop_assert!(t.0 > 0);
            prop_assert_eq!(t.to_string().parse::<Span>(), Ok(t));
        }
    }

    #[test]
    fn cpus_parse_or_refuse(s in cpu_text(), f in any::<f64>()) {
        for c in [s.parse::<Cpus>(), Cpus::from_f64(f)].into_iter().flatten() {
            prop_assert!((1..=1_024_000).contains(&c.0), "{c:?}");
            prop_assert!(c.quota_us(1_000_000) <= 1_024_000_000);
            prop_assert_eq!(Cpus::from_f64(c.as_f64()), Ok(c));
            prop_assert_eq!(c.to_string().parse::<Cpus>(), Ok(c));
        }
    }
}
