package address

import (
	"time"

	"github.com/haagent/haagent/internal/config"
)

func testAddressConfig() config.Address {
	return config.Address{PrivateIP: stableIP, RetryEvery: config.Duration(time.Second),
		Route53: &config.Route53{ZoneID: "Z0123456789ABC", Name: "services.circleci.internal", TTL: 60, SyncTimeout: config.Duration(time.Minute)}}
}
