//! Raw bytes as a DNS message from a client, through the whole request path
//! (hickory's parsing, our handler, truncation, encoding), over UDP and TCP.
//! Besides not panicking, every answer must be a well-formed response to
//! the query it answers and fit the transport.

#![no_main]

use hickory_proto::op::{Message, MessageType, ResponseCode};
use highlander::dns::{MAX_UDP_PAYLOAD, Transport, answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &[u8]| {
    let view = highlander_fuzz::zone_view();
    for transport in [Transport::Udp, Transport::Tcp] {
        let Some(reply) = answer(view.clone(), query, transport) else {
            continue;
        };
        assert_eq!(reply.get(..2), query.get(..2), "the ID is echoed");
        if transport == Transport::Udp {
            assert!(
                reply.len() <= usize::from(MAX_UDP_PAYLOAD),
                "{} bytes over UDP",
                reply.len()
            );
        }
        let decoded = match Message::from_vec(&reply) {
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
    }
});
