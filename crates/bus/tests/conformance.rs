//! The in-process bus passes the suite every bus must pass.

use std::sync::Arc;

use ferry_bus::conformance::{Instance, suite};
use ferry_bus::{BusMetrics, LocalBus};

#[tokio::test]
async fn the_local_bus_conforms() {
    let (bus, inbox) = LocalBus::new(3, BusMetrics::default());
    suite(vec![Instance { bus: Arc::new(bus), inbox }]).await;
}
