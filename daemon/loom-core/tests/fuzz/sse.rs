//! Server-sent events (the parser the agent and the proxy share): the same events in any chunks.

use super::*;

/// The events of `chunks`, and those the end-of-stream flush adds.
fn parse_sse<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<(Vec<SseEvent>, Vec<SseEvent>), String> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        out.extend(p.feed(c).map_err(|e| e.to_string())?);
    }
    let mut tail = Vec::new();
    p.finish_with(|e| tail.push(e.into())).map_err(|e| e.to_string())?;
    Ok((out, tail))
}

/// An event as a provider writes it (comments, `id:`, one line end throughout), and what it
/// means.
fn sse_event() -> impl Strategy<Value = (Vec<u8>, SseEvent)> {
    let line = "\\PC{0,40}";
    (
        prop::option::of(line),
        prop::option::of(line),
        prop::collection::vec((line, any::<bool>()), 1..4),
        select(vec!["\n", "\r\n", "\r"]),
    )
        .prop_map(|(name, comment, data, nl)| {
            let mut wire = String::new();
            if let Some(c) = comment {
                wire.push_str(&format!(":{c}{nl}"));
            }
            if let Some(n) = &name {
                wire.push_str(&format!("event: {n}{nl}"));
            }
            wire.push_str(&format!("id: 1{nl}"));
            let mut lines = Vec::new();
            for (d, spaced) in &data {
                wire.push_str(&format!("data:{}{d}{nl}", if *spaced { " " } else { "" }));
                lines.push(if *spaced { d.as_str() } else { d.strip_prefix(' ').unwrap_or(d) });
            }
            wire.push_str(nl);
            let event = SseEvent { event: name.unwrap_or_default(), data: lines.join("\n") };
            (wire.into_bytes(), event)
        })
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn valid_streams_give_their_events_in_any_chunks(
        events in prop::collection::vec(sse_event(), 0..8),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let wire: Vec<u8> = events.iter().flat_map(|(w, _)| w.clone()).collect();
        let want: Vec<SseEvent> = events.into_iter().map(|(_, e)| e).collect();
        let want = Ok((want, vec![]));
        prop_assert_eq!(&parse_sse([&wire[..]]), &want);
        prop_assert_eq!(&parse_sse(split_at_points(&wire, points)), &want);
        prop_assert_eq!(&parse_sse(wire.chunks(1)), &want);
    }

    #[test]
    fn a_stream_cut_anywhere_flushes_the_same_in_any_chunks(
        events in prop::collection::vec(sse_event(), 1..6),
        cut in any::<usize>(),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let wire: Vec<u8> = events.iter().flat_map(|(w, _)| w.clone()).collect();
        let wire = &wire[..cut % (wire.len() + 1)];
        let whole = parse_sse([wire]);
        prop_assert_eq!(&whole, &parse_sse(split_at_points(wire, points)));
        prop_assert_eq!(&whole, &parse_sse(wire.chunks(1)));
    }

    #[test]
    fn any_bytes_parse_the_same_in_any_chunks(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = parse_sse([&bytes[..]]);
        prop_assert_eq!(&whole, &parse_sse(split_at_points(&bytes, points)));
        let (events, tail) = whole.unwrap();
        prop_assert!(events.iter().chain(&tail).all(|e| e.data.len() <= MAX_SSE_BYTES));
    }
}
