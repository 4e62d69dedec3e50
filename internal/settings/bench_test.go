package settings

import "testing"

// BenchmarkParse parses a customization file shaped like the runbook's three.
func BenchmarkParse(b *testing.B) {
	src := []byte(`export MONGO_BASE_URI="mongodb://circle:p%40ss@m1:27017,m2:27017,m3:27017"
export CIRCLE_SECRETS_MONGODB_MAIN_URI="$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin"
export CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI="$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin"
export CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI="$MONGO_BASE_URI/build_state_dev_ghe?ssl=true&authSource=admin"
export CIRCLE_SECRETS_MONGODB_CONTAINERS_URI="$MONGO_BASE_URI/containers_dev_ghe?ssl=true&authSource=admin"
export CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI="$MONGO_BASE_URI/remote_containers_dev_ghe?ssl=true&authSource=admin"
export POSTGRES_HOST="pg.internal"
export POSTGRES_PORT="5432"
export POSTGRES_PASSWORD="secret"
export POSTGRES_USER="circle"
export VAULT__SCHEME="https"
export VAULT__HOST="vault.internal"
export VAULT__PORT="8200"
export VAULT__CLIENT_TOKEN="token"
export VAULT__TRANSIT_MOUNT="transit"
`)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if _, fs := Parse("bench", src); len(fs) != 0 {
			b.Fatal(fs)
		}
	}
}
