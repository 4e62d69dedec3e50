package findings

import "fmt"

// Entry is a catalogued code: its default severity, whether it blocks the install, the service
// it concerns and the fix shown when the reporter has nothing more specific.
type Entry struct {
	Code     string
	Severity Severity
	Blocking bool
	Service  string
	Fix      string
}

// Catalogue is every code haagent can report. Codes are stable: operators grep journals and
// alert on them (journalctl -u haagent HAAGENT_FINDING=CODE), so never rename one.
var Catalogue = []Entry{
	// config
	{"CONFIG_INVALID", Error, true, "haagent", "correct /etc/haagent/haagent.yaml (or the user-data document); `haagent validate` shows every error with its field path"},
	{"CONFIG_MISSING", Error, true, "haagent", "write /etc/haagent/haagent.yaml, or put a document starting with the line `#haagent-config` in the instance user-data"},

	// IMDS
	{"IMDS_UNREACHABLE", Error, true, "imds", "enable the instance metadata service (aws ec2 modify-instance-metadata-options --http-endpoint enabled) and check that nothing blocks 169.254.169.254"},
	{"IMDS_TOKEN_REFUSED", Error, true, "imds", "IMDSv2 token requests must be allowed: aws ec2 modify-instance-metadata-options --http-tokens required --http-endpoint enabled; haagent never falls back to IMDSv1"},
	{"IMDS_HOP_LIMIT", Error, true, "imds", "raise the metadata hop limit: aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2 (CircleCI's containers need 2 as well)"},

	// S3 fetch
	{"S3_ACCESS_DENIED", Error, true, "s3", "grant the instance role s3:GetObject on the bucket prefix and s3:ListBucket on the bucket (examples/iam-policy.json)"},
	{"S3_BUCKET_MISSING", Error, true, "s3", "check source.bucket in the haagent config: the bucket does not exist (or is in another partition)"},
	{"S3_CREDENTIALS_INVALID", Error, true, "s3", "the AWS credentials are wrong: check the instance profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in /etc/default/haagent"},
	{"S3_OBJECT_MISSING", Error, true, "s3", "upload the missing object to the bucket"},
	{"S3_PREFIX_EMPTY", Error, true, "s3", "upload the directory: aws s3 cp DIR s3://BUCKET/PREFIX --recursive"},
	{"S3_KEY_REFUSED", Error, true, "s3", "rename or delete the object: its key would write outside its destination directory"},
	{"S3_UNREACHABLE", Error, true, "s3", "check the instance's route to S3 (VPC endpoint or NAT), HTTPS_PROXY/NO_PROXY in /etc/default/haagent, and the S3 endpoint setting"},
	{"S3_FETCH_FAILED", Error, true, "s3", "see the evidence; haagent retries transient errors by itself"},
	{"S3_OFFLINE_LAST_GOOD", Warning, false, "s3", "S3 could not be reached; this reboot goes on with the files of the last completed boot. Restore the route to S3 so changes in the bucket are picked up"},
	{"KEYS_PREFIX_EMPTY", Warning, false, "s3", "normal on a brand-new install (CircleCI creates its keys on first start). On a replacement instance it means the keys were never backed up: copy them to s3://BUCKET/PREFIX/circleci-encryption-keys/ before CircleCI starts"},
	{"LOCAL_ONLY_FILES", Warning, false, "s3", "these files exist on the machine but not in the bucket; haagent never deletes them. Upload them if they must survive a replacement, or remove them by hand"},

	// session cookie key
	{"COOKIE_KEY_INVALID", Error, true, "cookie-key", "the object session-cookie-key must hold exactly 16 printable ASCII characters; fix or delete it (deleting logs every user out once)"},
	{"COOKIE_KEY_NOT_SAVED", Warning, false, "cookie-key", "grant the instance role s3:PutObject on PREFIX/session-cookie-key, or upload the key yourself; until then a replacement instance logs every user out"},
	{"COOKIE_KEY_UNAVAILABLE", Error, true, "cookie-key", "S3 could not tell whether a session cookie key exists and none is on the machine; haagent will not invent one (it would log every user out). Fix S3 access; haagent retries"},
	{"COOKIE_KEY_LOCAL_ONLY", Warning, false, "cookie-key", "S3 could not be read; the key already on the machine is kept. Fix S3 access so replacements keep the same key"},

	// CircleCI's file layout: the bucket's circle-installation-customizations (layout work)
	{"COOKIE_KEY_OVERRIDDEN", Warning, false, "cookie-key", "the bucket's circle-installation-customizations sets CIRCLE_SECRETS_SESSION_COOKIE_KEY to another key than the session-cookie-key object, whose key is used: remove the line from the bucket's copy (haagent writes it), or, if that line holds the key your users' sessions use, put it in session-cookie-key"},

	// settings files
	{"CONFIG_SYNTAX", Error, true, "settings", "fix the shell syntax at the position shown, in the bucket's copy of the file"},
	{"SETTING_MISSING", Error, true, "settings", "set the variable in a file of circleconfig/shared/ in the bucket"},
	{"SETTING_REFUSED", Error, true, "settings", "write the value out literally: settings files hold only NAME=value or export NAME=value lines"},

	// network and TLS, shared by every probe
	{"URI_MALFORMED", Error, true, "network", "percent-encode special characters in the user name and password (@ is %40, / is %2F, : is %3A)"},
	{"DNS_NOT_FOUND", Error, true, "network", "the host name does not resolve from this machine: check the name, the VPC's DNS settings and any private hosted zone"},
	{"TCP_REFUSED", Error, true, "network", "nothing listens on that port: check the port, and that the server listens on its network address, not only on localhost"},
	{"TCP_TIMEOUT", Error, true, "network", "no answer at all: a security group, network ACL or firewall drops the traffic; allow this instance to reach that port"},
	{"PROTOCOL_TIMEOUT", Error, true, "network", "the port accepts connections but does not answer the protocol: check that it is the right service and port, and that the server is not overloaded"},
	{"TLS_UNKNOWN_AUTHORITY", Error, false, "network", "put the issuing CA certificate in the bucket's ca-certificates/ prefix (installed into /usr/local/share/ca-certificates as .crt)"},
	{"TLS_HOSTNAME_MISMATCH", Error, false, "network", "connect with a name the certificate holds, or reissue the certificate with this name in its subject alternative names"},
	{"TLS_EXPIRED", Error, false, "network", "renew the server certificate (and check this machine's clock: timedatectl)"},
	{"TLS_REQUIRED", Error, true, "network", "make both sides agree: enable TLS on the server, or match the client setting to what the server offers"},
	{"TLS_OFF", Info, false, "network", "the server offers no TLS: connection settings and data cross the network in clear text"},
	{"PROBE_INCONCLUSIVE", Warning, false, "network", "haagent could not tell; see the evidence"},

	// PostgreSQL
	{"PG_AUTH_FAILED", Error, true, "postgres", "check POSTGRES_USER and POSTGRES_PASSWORD against the role (ALTER ROLE circle PASSWORD '...')"},
	{"PG_HBA_REJECTED", Error, true, "postgres", "add a pg_hba.conf line (or RDS security settings) admitting this user from this host, with TLS as the server requires"},
	{"PG_DATABASE_MISSING", Error, true, "postgres", "create the database: CREATE DATABASE name OWNER circle;"},
	{"PG_CONNECT_DENIED", Error, true, "postgres", "GRANT CONNECT ON DATABASE name TO circle;"},
	{"PG_EXTENSION_MISSING", Error, true, "postgres", "install the extension in that database as a superuser"},
	{"PG_VERSION_UNSUPPORTED", Error, true, "postgres", "CircleCI needs PostgreSQL 9.5 or later: upgrade the server"},
	{"PG_READ_ONLY", Error, true, "postgres", "point POSTGRES_HOST at the primary (the writer endpoint on RDS), not a replica"},

	// MongoDB
	{"MONGO_AUTH_FAILED", Error, true, "mongo", "check the user name and password in the URI; percent-encode special characters. On MongoDB 3.x a user created before 3.0 may hold only MONGODB-CR credentials: upgrade them with db.adminCommand({authSchemaUpgrade: 1})"},
	{"MONGO_REPLSET_MISMATCH", Error, true, "mongo", "make replicaSet= in the URIs match the set's name (rs.conf()._id)"},
	{"MONGO_NO_PRIMARY", Error, true, "mongo", "a majority of members must be up and reach each other to elect a primary"},
	{"MONGO_MEMBER_UNREACHABLE", Error, true, "mongo", "make every member's advertised host name resolve and reach from this machine, or rename the member"},
	{"MONGO_PRIVILEGE_MISSING", Error, true, "mongo", "grant the user readWrite on the database"},
	{"MONGO_VERSION_LIMITED", Info, false, "mongo", "nothing to do if the services work with this server: haagent could not check the password and privileges (MongoDB before 3.0, or an authMechanism other than SCRAM-SHA-1 before 3.6)"},
	{"MONGO_NO_REPLICA_SET_IN_URI", Warning, false, "mongo", "add replicaSet=NAME to the URIs and list the members as seeds: a URI naming one host makes the driver talk to that host alone, which after a failover is no longer the primary"},

	// Vault. The probe names the command line of the server's version in its fix (0.7, the
	// runbook's: vault unseal, vault token-create, vault mount, vault policy-write); these
	// defaults give both.
	{"VAULT_SCHEME_MISMATCH", Error, true, "vault", "make VAULT__SCHEME match the listener: https for a TLS listener"},
	{"VAULT_SEALED", Error, true, "vault", "unseal Vault with the required number of unseal keys: vault operator unseal (Vault 0.x: vault unseal), repeated per key holder"},
	{"VAULT_UNINITIALIZED", Error, true, "vault", "initialize Vault (vault operator init; Vault 0.x: vault init), unseal it, mount transit and issue the services' token"},
	{"VAULT_TOKEN_INVALID", Error, true, "vault", "issue a new periodic token: vault token create -policy=NAME -period=1h (Vault 0.x: vault token-create -policy=NAME -period=1h), and put it in VAULT__CLIENT_TOKEN"},
	{"VAULT_TOKEN_EXPIRING", Error, false, "vault", "issue a renewable periodic token without an explicit max TTL: vault token create -policy=NAME -period=1h (Vault 0.x: vault token-create)"},
	{"VAULT_PERMISSION_DENIED", Error, true, "vault", "attach a policy granting the transit paths to the token"},
	{"VAULT_TRANSIT_MISSING", Error, true, "vault", "vault secrets enable transit (Vault 0.x: vault mount transit), and set VAULT__TRANSIT_MOUNT to its path"},
	{"VAULT_REDIRECT", Warning, false, "vault", "point VAULT__SCHEME, VAULT__HOST and VAULT__PORT at the active Vault node or at a load balancer that sends requests to it"},

	// the frontend watch
	{"DOCKER_NOT_ANSWERING", Warning, false, "watch", "dockerd accepts connections but does not answer: look at journalctl -u docker and `systemctl status docker`; `systemctl restart docker` restarts it (CircleCI's containers restart with it). If it persists, the guard may replace the instance"},
	{"FRONTEND_CRASH_LOOP", Error, false, "frontend", "read the frontend's last lines (journalctl -u haagent CONTAINER_NAME=frontend) and the probes' findings: a database or Vault setting is the usual cause"},

	// encryption keys backup
	{"KEYS_NOT_BACKED_UP", Error, false, "keys", "grant the instance role s3:PutObject on the keys prefix; a replacement instance cannot decrypt CircleCI's data without them"},
	{"KEYS_BACKUP_SKIPPED", Warning, false, "keys", "restore the route to S3; haagent compares the keys with the bucket at the next boot, or run haagent backup keys"},
	{"KEYS_CONFLICT", Error, false, "keys", "two different keys carry one name and neither is replaced: decide which copy CircleCI's data was encrypted with (README: Encryption keys), then move the other out of the way by hand: the bucket's with aws s3 mv s3://BUCKET/PREFIX/circleci-encryption-keys/NAME s3://BUCKET/PREFIX/circleci-encryption-keys-conflicts/NAME, or the machine's with mv /data/circle/circleci-encryption-keys/NAME /root/NAME.conflict; haagent then copies the kept one across"},

	// Auto Scaling
	{"ASG_NOT_MEMBER", Info, false, "asg", "the instance is in no Auto Scaling group: nothing replaces it when it dies. Launch it from the Services machine's single-member group (examples/launch-template.json), or set asg.enabled: false"},
	{"ASG_API_FAILED", Warning, false, "asg", "grant the instance role the Auto Scaling actions in examples/iam-policy.json and check the route to the Auto Scaling endpoint; the boot goes on without them"},
	{"ASG_HEALTH_CHECK_NOT_EC2", Warning, false, "asg", "use EC2 health checks on the Services machine's group (aws autoscaling update-auto-scaling-group --auto-scaling-group-name GROUP --health-check-type EC2): a load balancer check fails during every first install and while a database is down, and the group then replaces the instance whatever haagent decides"},
	{"ASG_HOOK_MISSING", Warning, false, "asg", "create the launch hook: aws autoscaling put-lifecycle-hook --auto-scaling-group-name GROUP --lifecycle-hook-name HOOK --lifecycle-transition autoscaling:EC2_INSTANCE_LAUNCHING --default-result CONTINUE --heartbeat-timeout 900"},
	{"ASG_HOOK_ABANDON", Error, false, "asg", "make the hook default to CONTINUE (aws autoscaling put-lifecycle-hook ... --default-result CONTINUE): with ABANDON a boot that outlasts the hook (a slow first install, an S3 or database outage) terminates the instance and the next one starts over, for ever"},
	{"ASG_HOOK_NOT_LAUNCH", Warning, false, "asg", "asg.lifecycle_hook must name the group's autoscaling:EC2_INSTANCE_LAUNCHING hook"},
	{"ASG_GROUP_SIZE", Warning, false, "asg", "the Services machine's group must hold exactly one instance: set min, max and desired capacity to 1 (two Services machines against the same databases corrupt CircleCI's data)"},
	{"ASG_LIFECYCLE_EXPIRED", Warning, false, "asg", "the launch lifecycle action ended before the boot completed (the hook's heartbeat or global timeout passed); raise the hook's --heartbeat-timeout, and check it defaults to CONTINUE"},
	{"ASG_REPLACEMENT_WITHHELD", Warning, false, "asg", "the frontend is failing and a replacement would not help: fix what the reason names; haagent keeps probing and decides again"},
	{"ASG_REPLACEMENT_REQUESTED", Warning, false, "asg", "haagent marked this instance unhealthy so the group replaces it; read the reason and the frontend's last lines, and check the new instance's journal"},

	// fetched files
	{"FILE_SYNTAX", Error, true, "files", "fix the JSON at the position shown in the bucket's copy (a lost brace, a trailing comma, a typographic quote)"},
	{"FILE_INVALID", Error, true, "files", "fix the file in the bucket as the summary says"},
	{"FILE_UNKNOWN_KEY", Warning, false, "files", "remove the key or correct its spelling"},
	{"LICENSE_MISSING", Error, true, "files", "upload the CircleCI licence (license.rli) to the bucket"},
	{"SETTINGS_DRIFT", Warning, false, "files", "Replicated reads settings.conf only at install time: apply the change in the Replicated console (https://HOST:8800/settings), or run haagent run --reinstall in a maintenance window"},

	// modes and owners of the files written (who reads them: the Replicated daemon runs as
	// user replicated in group docker and sees only /etc, mounted read-only)
	{"FILE_UNREADABLE_BY_REPLICATED", Error, true, "files", "keep the file under /etc and make it and every directory above it readable through group docker: chgrp docker FILE && chmod 0640 FILE (haagent's default for the licence and settings.conf; files.NAME.group: docker)"},
	{"FILE_OWNER_UNRESOLVED", Error, true, "files", "create the user or group the config names (groupadd NAME), or correct files.NAME.user/group (or give uid/gid)"},
	{"FILE_SYMLINK_NOT_FOLLOWED", Warning, false, "files", "replace the symbolic link with a plain file (rm the link; haagent writes the file on its next run)"},

	// CA certificates
	{"CA_CERT_INVALID", Error, false, "ca-certs", "the bucket's ca-certificates/ prefix takes PEM CA certificates only: remove keys, leaf certificates and other files"},
	{"CA_CERT_EXPIRED", Error, false, "ca-certs", "replace the expired CA certificate in the bucket (and the server certificates it signed)"},
	{"CA_CERT_EXPIRING", Warning, false, "ca-certs", "renew the CA certificate before it expires"},

	// Issue 14 (encryption keys never lost, local disk errors, CA files): one block for the merge.
	{"LOCAL_WRITE_FAILED", Error, true, "files", "the bytes arrived but this machine could not write them: free space (df -h), remount read-write, or fix the directory's permissions; S3 is not at fault and haagent does not retry it"},
	{"KEYS_EMPTY", Error, true, "keys", "an encryption key is empty (0 bytes): it is never installed nor backed up. Restore the key's real content from the machine or backup that has it: aws s3 cp KEYFILE s3://BUCKET/PREFIX/circleci-encryption-keys/NAME (for a bucket copy) or put the file back in /data/circle/circleci-encryption-keys/"},
	{"KEYS_MISSING", Error, true, "keys", "this deployment existed before but the bucket holds no encryption keys: CircleCI would create new ones and its data encrypted with the old ones would be unreadable. Copy the keys from the old machine (or its backup) to s3://BUCKET/PREFIX/circleci-encryption-keys/ before booting; haagent stops before the installer until then"},
	{"KEYS_PATH_NOT_FILE", Error, false, "keys", "a symbolic link (or device) stands where an encryption key goes: haagent neither follows nor replaces it, and the rest of the files are installed. If it points at the real key, replace it with the file (cp --remove-destination \"$(readlink -f PATH)\" PATH); if it is stray, move it aside so haagent installs the bucket's key"},

	// Replicated installer
	{"INSTALLER_DOWNLOAD_FAILED", Error, true, "replicated", "check replicated.installer_url, the route to it (HTTPS_PROXY) and its TLS certificate"},
	{"INSTALLER_CHECKSUM_MISMATCH", Error, true, "replicated", "the installer is not the one pinned by replicated.sha256: verify the new script and update the pin"},
	{"INSTALLER_FAILED", Error, true, "replicated", "read the installer's output (journalctl -u haagent-replicated-install); fix the cause and haagent reruns it"},
	{"INSTALLER_TIMEOUT", Error, true, "replicated", "the installer ran past replicated.timeout: check the network to the Replicated and Docker registries, or raise the timeout"},
	// the installer's contract (exit 0 is not success; its arguments; its download)
	{"INSTALLER_NOTHING_INSTALLED", Error, true, "replicated", "the installer exited 0 without installing (it gave up at a question it could not ask): read its last lines; bake a pinned Docker into the AMI (so haagent passes no-docker) or install the Docker version it recommends, then haagent runs it again"},
	{"INSTALLER_ARG_UNKNOWN", Error, true, "replicated", "remove or correct the argument in replicated.extra_args: the installer exits 1 on a parameter it does not know, haagent sets local-address, the proxy and no-docker itself, install-docker-only, is-migration and airgap make no CircleCI Services machine, and a value may hold no whitespace"},
	{"INSTALLER_REDIRECT_REFUSED", Error, true, "replicated", "point replicated.installer_url at an https URL that does not redirect to http (or keep the script in the bucket: s3://bucket/key with replicated.sha256)"},
	{"INSTALLER_UNPINNED", Warning, false, "replicated", "pin the installer: set replicated.sha256 to the sha256 this run logged once you have read the script, or keep a reviewed copy in the bucket (installer_url: s3://bucket/key)"},

	// The supervisor of monitors (issue 15): what it says about a monitor, filed under its name.
	{"MONITOR_FAILING", Warning, false, "haagent", "a monitor keeps failing: read its last error (the evidence) and `journalctl -u haagent HAAGENT_MONITOR=NAME`, and fix what it names (a permission, a route, the Docker engine); haagent keeps restarting it with backoff"},
	{"MONITOR_PANICKED", Error, false, "haagent", "a bug in haagent: report it with the stack logged just before (journalctl -u haagent HAAGENT_MONITOR=NAME); haagent restarts the monitor meanwhile"},
	{"MONITOR_STALLED", Error, false, "haagent", "a monitor's loop is blocked, so haagent stopped feeding systemd's watchdog and systemd restarts haagent (journalctl -u haagent shows the watchdog timeout); if it recurs, report it with `journalctl -u haagent HAAGENT_MONITOR=NAME`"},
}

var byCode = func() map[string]Entry {
	m := make(map[string]Entry, len(Catalogue))
	for _, e := range Catalogue {
		if _, dup := m[e.Code]; dup {
			panic("findings: duplicate catalogue code " + e.Code)
		}
		m[e.Code] = e
	}
	return m
}()

// Lookup returns the catalogue entry for code. It panics on an unknown code: every code must be
// catalogued so docs, tests and overrides can list it.
func Lookup(code string) Entry {
	e, ok := byCode[code]
	if !ok {
		panic(fmt.Sprintf("findings: code %q is not in the catalogue", code))
	}
	return e
}

// Known reports whether code is catalogued.
func Known(code string) bool {
	_, ok := byCode[code]
	return ok
}
