//! `Isolation` cuts exactly the traffic it names, and heals: between two loopback
//! addresses nothing passes while cut, other addresses still talk to both, and after
//! `heal` (or a drop) connections work again.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use testkit::Isolation;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A connection from `from` to `to` within half a second.
fn connects(from: &str, to: SocketAddr) -> bool {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("an address");
    socket.bind(&local.into()).expect("bind the source address");
    socket.connect_timeout(&to.into(), CONNECT_TIMEOUT).is_ok()
}

#[test]
fn given_an_isolated_address_when_cut_and_healed_should_drop_only_its_traffic_until_healed() {
    if !Isolation::available() {
        return;
    }
    let listener_2 = TcpListener::bind("127.0.0.2:0").expect("listen on 127.0.0.2");
    let listener_3 = TcpListener::bind("127.0.0.3:0").expect("listen on 127.0.0.3");
    let at_2 = listener_2.local_addr().expect("address");
    let at_3 = listener_3.local_addr().expect("address");
    assert!(connects("127.0.0.2", at_3), "before the cut");

    let cut = Isolation::cut("127.0.0.2", &["127.0.0.3"]);
    assert!(!connects("127.0.0.2", at_3), "2 -> 3 while cut");
    assert!(!connects("127.0.0.3", at_2), "3 -> 2 while cut");
    assert!(connects("127.0.0.1", at_2), "1 -> 2 is not cut");
    assert!(connects("127.0.0.1", at_3), "1 -> 3 is not cut");
    assert!(connects("127.0.0.2", at_2), "2 -> 2 is not cut");
    cut.heal();
    assert!(connects("127.0.0.2", at_3), "2 -> 3 once healed");

    {
        let _dropped = Isolation::cut("127.0.0.3", &["127.0.0.2", "127.0.0.1"]);
        assert!(!connects("127.0.0.1", at_3), "1 -> 3 while cut");
    }
    assert!(
        connects("127.0.0.1", at_3),
        "1 -> 3 once the guard is dropped"
    );
    let _ = TcpStream::connect(at_2);
}
