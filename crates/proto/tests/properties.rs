//! Property tests of the codec: round trips and robustness on arbitrary input.

use proptest::prelude::*;
use proto::{Command, CommandError, Decoder, Secret, MAX_COMMAND_LINE};

fn word() -> impl Strategy<Value = String> {
    "[!-~&&[^ ]]{1,40}"
}

fn command() -> impl Strategy<Value = Command> {
    let n = any::<u32>();
    prop_oneof![
        word().prop_map(Command::User),
        proptest::collection::vec(
            any::<u8>().prop_filter("no NUL/CR/LF", |b| ![0, b'\r', b'\n'].contains(b)),
            1..100
        )
        .prop_map(|p| Command::Pass(Secret::new(p))),
        (word(), "[0-9a-f]{32}").prop_map(|(name, digest)| Command::Apop { name, digest }),
        Just(Command::Stat),
        proptest::option::of(n).prop_map(Command::List),
        n.prop_map(Command::Retr),
        n.prop_map(Command::Dele),
        Just(Command::Noop),
        Just(Command::Rset),
        Just(Command::Quit),
        (n, n).prop_map(|(msg, lines)| Command::Top { msg, lines }),
        proptest::option::of(n).prop_map(Command::Uidl),
        Just(Command::Capa),
        Just(Command::Stls),
        (
            proptest::option::of("[A-Z0-9_-]{1,20}"),
            proptest::option::of("[A-Za-z0-9+/=]{1,100}")
        )
            .prop_map(|(mechanism, ir)| Command::Auth {
                initial_response: mechanism.as_ref().and(ir).map(Secret::new),
                mechanism,
            }),
        Just(Command::Utf8),
        proptest::option::of("[a-zA-Z*-]{1,10}").prop_map(Command::Lang),
    ]
}

proptest! {
    /// encode -> decode gives the same commands, at any chunking, pipelined.
    #[test]
    fn encode_then_decode_round_trips(cmds in proptest::collection::vec(command(), 1..20), chunk in 1usize..64) {
        let mut wire = Vec::new();
        for c in &cmds {
            c.encode(&mut wire);
        }
        let mut d = Decoder::new();
        let mut back = Vec::new();
        for piece in wire.chunks(chunk) {
            d.feed(piece);
            while let Some(c) = d.next_command().expect("valid command") {
                back.push(c);
            }
        }
        prop_assert_eq!(back, cmds);
    }

    /// Arbitrary bytes never panic, the buffer stays bounded, and a valid command after a
    /// line end is always decoded (the decoder resynchronises).
    #[test]
    fn never_panics_and_resynchronises(junk in proptest::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..300) {
        let mut d = Decoder::new();
        for piece in junk.chunks(chunk) {
            d.feed(piece);
            while !matches!(d.next_command(), Ok(None)) {}
            prop_assert!(d.buffered() <= chunk + MAX_COMMAND_LINE);
        }
        d.feed(b"\r\nNOOP\r\n");
        let mut last = None;
        loop {
            match d.next_command() {
                Ok(Some(c)) => last = Some(c),
                Err(CommandError::LineTooLong) | Err(_) => {}
                Ok(None) => break,
            }
        }
        prop_assert_eq!(last, Some(Command::Noop));
    }
}
