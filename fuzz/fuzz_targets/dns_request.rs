//! Raw bytes as a DNS message from a client, through the whole request path
//! as a node serves it: over UDP the fast path first (`dns::fast`, which
//! answers the hot questions from pre-encoded answers) and the handler for
//! what it declines, over TCP hickory's parsing and our handler. Besides
//! not panicking, every answer must be a well-formed response to the query
//! it answers and fit the transport, and every fast answer must be the
//! handler's answer to the same message.
//!
//! The message picks the conditions from its ID's second byte, which only
//! ever comes back unchanged: bit 0 set lapses the lease (service names are
//! then the handler's, answered SERVFAIL), bit 7 set puts the client over
//! its rate limit (every answer slips: truncated, no records).

#![no_main]

use hickory_proto::op::{Message, MessageType, ResponseCode};
use highlander::dns::{MAX_UDP_PAYLOAD, Transport, UdpAnswer, UdpBudget, answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &[u8]| {
    let id = query.get(1).copied().unwrap_or(0);
    let lease_held = id & 0x01 == 0;
    let budget = if id & 0x80 == 0 {
        UdpBudget::Unlimited
    } else {
        UdpBudget::Spent
    };
    let udp = highlander_fuzz::udp_answerer(lease_held, budget);
    match udp.answer(query) {
        UdpAnswer::Fast(fast) => {
            let fast_decoded = check_reply(query, &fast, Transport::Udp);
            let Some(slow) = udp.handler_answer(query) else {
                panic!("the fast path answered {query:02x?}, the handler would not");
            };
            let slow_decoded = check_reply(query, &slow, Transport::Udp);
            same_answer(&fast_decoded, &slow_decoded, query);
            // The fast path patches pre-encoded bytes to be the handler's own.
            assert_eq!(fast, slow, "fast and handler bytes differ for {query:02x?}");
        }
        UdpAnswer::FastDropped => panic!("dropped without a drop budget: {query:02x?}"),
        UdpAnswer::Handler(Some(reply)) => {
            check_reply(query, &reply, Transport::Udp);
        }
        UdpAnswer::Handler(None) => {}
    }
    if let Some(reply) = answer(highlander_fuzz::zone_view(), query, Transport::Tcp) {
        check_reply(query, &reply, Transport::Tcp);
    }
});

/// Checks what must hold of every answer, and decodes it.
fn check_reply(query: &[u8], reply: &[u8], transport: Transport) -> Message {
    assert_eq!(reply.get(..2), query.get(..2), "the ID is echoed");
    if transport == Transport::Udp {
        assert!(
            reply.len() <= usize::from(MAX_UDP_PAYLOAD),
            "{} bytes over UDP",
            reply.len()
        );
    }
    let decoded = match Message::from_vec(reply) {
        Ok(decoded) => decoded,
        Err(error) => panic!("undecodable {transport:?} answer {reply:02x?}: {error}"),
    };
    assert_eq!(decoded.metadata.message_type, MessageType::Response);
    // Our own SERVFAILs always carry the question; one without it is
    // hickory's fallback for an answer that could not be encoded.
    if decoded.metadata.response_code == ResponseCode::ServFail {
        assert_eq!(
            decoded.queries.len(),
            1,
            "SERVFAIL without the question: {decoded:?}"
        );
    }
    decoded
}

/// The fast answer says what the handler's says: header flags and code,
/// the question (case included), every record, and the OPT.
fn same_answer(fast: &Message, slow: &Message, query: &[u8]) {
    let (f, s) = (&fast.metadata, &slow.metadata);
    let header = |m: &hickory_proto::op::Metadata| {
        (
            m.id,
            m.message_type,
            m.op_code,
            m.response_code,
            m.authoritative,
            m.truncation,
            m.recursion_desired,
            m.recursion_available,
            m.authentic_data,
            m.checking_disabled,
        )
    };
    assert_eq!(header(f), header(s), "header, query {query:02x?}");
    let question = |m: &Message| {
        m.queries
            .iter()
            .map(|q| (q.name().to_ascii(), q.query_type(), q.query_class()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        question(fast),
        question(slow),
        "question, query {query:02x?}"
    );
    assert_eq!(fast.answers, slow.answers, "answers, query {query:02x?}");
    assert_eq!(
        fast.authorities, slow.authorities,
        "authority, query {query:02x?}"
    );
    assert_eq!(
        fast.additionals, slow.additionals,
        "additional, query {query:02x?}"
    );
    let opt = |m: &Message| {
        m.edns.as_ref().map(|e| {
            (
                e.max_payload(),
                e.version(),
                e.flags().dnssec_ok,
                e.rcode_high(),
            )
        })
    };
    assert_eq!(opt(fast), opt(slow), "OPT, query {query:02x?}");
}
