//! TCP framing (RFC 6587): octet counting (`MSG-LEN SP SYSLOG-MSG`) or non-transparent
//! framing (one message per line, LF-terminated), detected on a connection's first byte.
//! Pure and total: any bytes give frames, never a panic and never lost bytes.

/// How a connection frames its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// Nothing received yet.
    #[default]
    Unknown,
    /// Octet counting: a decimal length, a space, that many bytes.
    OctetCounting,
    /// Non-transparent framing: messages end with LF (a CR before it and NULs are dropped).
    Lf,
}

/// One message cut from the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message's bytes.
    pub msg: &'a [u8],
    /// Why the frame is not a clean message (kept and counted as malformed), if it is not.
    pub fault: Option<&'static str>,
}

/// The longest octet count accepted (digits).
const MAX_LEN_DIGITS: usize = 10;

/// Cuts the next frame from `buf`: the frame and the bytes it used, or `None` when `buf` holds
/// no complete frame yet. `max` bounds a message: a longer line is cut into pieces of `max`
/// bytes (each flagged), a longer octet count switches the connection to LF framing (the bytes
/// are kept, flagged). Empty lines are skipped (their bytes are used, no frame is returned
/// for them but the next one is looked for).
pub fn next_frame<'a>(
    buf: &'a [u8],
    framing: &mut Framing,
    max: usize,
) -> Option<(Frame<'a>, usize)> {
    let max = max.max(1);
    let mut skipped = 0;
    loop {
        let rest = &buf[skipped..];
        if rest.is_empty() {
            return None;
        }
        if *framing == Framing::Unknown {
            *framing = if rest[0].is_ascii_digit() { Framing::OctetCounting } else { Framing::Lf };
        }
        match *framing {
            Framing::OctetCounting => {
                // Senders may separate frames with LF too: skip blank bytes between frames.
                if matches!(rest[0], b'\n' | b'\r' | b'\0' | b' ') {
                    skipped += 1;
                    continue;
                }
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                if digits == rest.len() && digits <= MAX_LEN_DIGITS {
                    return None; // the length is still arriving
                }
                let len = std::str::from_utf8(&rest[..digits])
                    .ok()
                    .and_then(|d| d.parse::<usize>().ok())
                    .filter(|_| digits > 0 && digits <= MAX_LEN_DIGITS);
                let ok = rest.get(digits) == Some(&b' ');
                match len {
                    Some(len) if ok && len <= max => {
                        let start = digits + 1;
                        if rest.len() < start + len {
                            return None;
                        }
                        let frame = Frame { msg: &rest[start..start + len], fault: None };
                        return Some((frame, skipped + start + len));
                    }
                    _ => {
                        // Not octet counting after all (or a length beyond the limit): the
                        // rest of the connection is read as lines, these bytes included.
                        // Decided once the line is complete (until then the same bytes
                        // would be decided the same way), so split points change nothing.
                        let f = next_lf(buf, skipped, max, Some("bad octet count"))?;
                        *framing = Framing::Lf;
                        return Some(f);
                    }
                }
            }
            Framing::Lf | Framing::Unknown => {
                if matches!(rest[0], b'\n' | b'\r' | b'\0') {
                    skipped += 1;
                    continue;
                }
                return next_lf(buf, skipped, max, None);
            }
        }
    }
}

/// An LF-terminated frame starting at `buf[from]` (not a terminator).
fn next_lf<'a>(
    buf: &'a [u8],
    from: usize,
    max: usize,
    fault: Option<&'static str>,
) -> Option<(Frame<'a>, usize)> {
    let rest = &buf[from..];
    match rest.iter().take(max + 1).position(|&b| b == b'\n' || b == b'\0') {
        Some(end) => {
            let mut msg = &rest[..end];
            if msg.last() == Some(&b'\r') {
                msg = &msg[..msg.len() - 1];
            }
            let (msg, used, fault) = if msg.len() > max {
                (&msg[..max], from + max, Some("line longer than the message limit"))
            } else {
                (msg, from + end + 1, fault)
            };
            Some((Frame { msg, fault }, used))
        }
        None if rest.len() > max => Some((
            Frame { msg: &rest[..max], fault: Some("line longer than the message limit") },
            from + max,
        )),
        None => None,
    }
}

/// The bytes a connection left unframed when it ended (a last line without its LF, a cut
/// octet-counted frame): one frame, flagged unless it is a plain last line.
pub fn last_frame(buf: &[u8], framing: Framing) -> Option<Frame<'_>> {
    let start = buf.iter().position(|b| !matches!(b, b'\n' | b'\r' | b'\0' | b' '))?;
    let mut msg = &buf[start..];
    while let Some((b'\r' | b'\n' | b'\0', head)) = msg.split_last() {
        msg = head;
    }
    let fault = match framing {
        Framing::OctetCounting => Some("connection ended inside an octet-counted frame"),
        _ => None,
    };
    Some(Frame { msg, fault })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], max: usize) -> (Vec<(Vec<u8>, bool)>, usize, Framing) {
        let mut f = Framing::Unknown;
        let mut pos = 0;
        let mut out = Vec::new();
        while let Some((fr, used)) = next_frame(&input[pos..], &mut f, max) {
            assert!(used > 0 && pos + used <= input.len());
            out.push((fr.msg.to_vec(), fr.fault.is_some()));
            pos += used;
        }
        (out, pos, f)
    }

    #[test]
    fn lf_framing() {
        let (out, used, f) = all(b"<13>a b\n<13>c\r\n\n<13>partial", 100);
        assert_eq!(f, Framing::Lf);
        assert_eq!(out, vec![(b"<13>a b".to_vec(), false), (b"<13>c".to_vec(), false)]);
        assert_eq!(used, 15); // the blank line waits for the next frame
    }

    #[test]
    fn octet_counting() {
        let (out, used, f) = all(b"7 <13>a\nb12 <13>x", 100);
        assert_eq!(f, Framing::OctetCounting);
        assert_eq!(out, vec![(b"<13>a\nb".to_vec(), false)]);
        assert_eq!(used, 9);
    }

    #[test]
    fn octet_count_waits_for_its_digits() {
        let mut f = Framing::Unknown;
        assert_eq!(next_frame(b"12", &mut f, 100), None);
        assert_eq!(f, Framing::OctetCounting);
    }

    #[test]
    fn bad_count_falls_back_to_lines() {
        let (out, _, f) = all(b"12x <13>a\n<13>b\n", 100);
        assert_eq!(f, Framing::Lf);
        assert_eq!(out, vec![(b"12x <13>a".to_vec(), true), (b"<13>b".to_vec(), false)]);
    }

    #[test]
    fn long_lines_are_cut_not_lost() {
        let (out, used, _) = all(b"abcdefghij\n", 4);
        let joined: Vec<u8> = out.iter().flat_map(|(m, _)| m.clone()).collect();
        assert_eq!(joined, b"abcdefghij");
        assert_eq!(used, 11);
        assert!(out[0].1);
    }

    #[test]
    fn oversized_octet_count_is_kept() {
        let (out, _, f) = all(b"999 <13>x\n", 10);
        assert_eq!(f, Framing::Lf);
        assert_eq!(out, vec![(b"999 <13>x".to_vec(), true)]);
    }

    #[test]
    fn last_frame_keeps_an_unterminated_line() {
        assert_eq!(last_frame(b"<13>end", Framing::Lf).map(|f| f.msg), Some(&b"<13>end"[..]));
        assert!(last_frame(b"\n\r", Framing::Lf).is_none());
        assert!(last_frame(b"5 <1", Framing::OctetCounting).is_some_and(|f| f.fault.is_some()));
    }

    /// Random bytes (syslog-like and junk), delivered in random pieces as a connection would
    /// get them: the same frames come out as from the whole stream at once, every call makes
    /// progress, nothing panics, and a message never exceeds the limit.
    #[test]
    fn fuzz_random_streams_and_splits() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let alphabet = b"0123456789 <>\n\r\0abc\xff";
        for round in 0..3000 {
            let len = (next() % 600) as usize;
            let junk = round % 3 == 0;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    if junk {
                        next() as u8
                    } else {
                        alphabet[(next() % alphabet.len() as u64) as usize]
                    }
                })
                .collect();
            let max = 1 + (next() % 64) as usize;
            let (whole, _, _) = all(&input, max);
            // Piecewise, as the server delivers it.
            let mut f = Framing::Unknown;
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut fed = 0;
            while fed < input.len() {
                let step = 1 + (next() % 40) as usize;
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
                let mut used = 0;
                while let Some((fr, n)) = next_frame(&buf[used..], &mut f, max) {
                    assert!(n > 0);
                    assert!(fr.msg.len() <= max);
                    got.push((fr.msg.to_vec(), fr.fault.is_some()));
                    used += n;
                }
                buf.drain(..used);
            }
            // Framing is decided by the first byte and falls back only on bad input, so the
            // split points change nothing: same messages in the same order.
            assert_eq!(whole, got, "round {round}: {input:?} max {max}");
            let _ = last_frame(&buf, f);
        }
    }
}
