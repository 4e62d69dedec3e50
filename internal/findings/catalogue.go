package findings

import "slices"

// The catalogue: every code haagent can report, registered once here. Each code is an exported
// value (PGAuthFailed for PG_AUTH_FAILED), so a reporter that mistypes one fails to compile,
// and docs, tests and config validation list them from Catalogue(). Codes are stable:
// operators grep journals and alert on them (journalctl -u haagent HAAGENT_FINDING=CODE), so
// never rename one.
var (
	// config
	ConfigInvalid = register(Entry{Code: "CONFIG_INVALID", Severity: Error, Blocking: true, Service: "haagent",
		Fix: "correct /etc/haagent/haagent.yaml (or the user-data document); `haagent validate` shows every error with its field path"})
	ConfigMissing = register(Entry{Code: "CONFIG_MISSING", Severity: Error, Blocking: true, Service: "haagent",
		Fix: "write /etc/haagent/haagent.yaml, or put a document starting with the line `#haagent-config` in the instance user-data"})

	// IMDS
	IMDSUnreachable = register(Entry{Code: "IMDS_UNREACHABLE", Severity: Error, Blocking: true, Service: "imds",
		Fix: "enable the instance metadata service (aws ec2 modify-instance-metadata-options --http-endpoint enabled) and check that nothing blocks 169.254.169.254"})
	IMDSTokenRefused = register(Entry{Code: "IMDS_TOKEN_REFUSED", Severity: Error, Blocking: true, Service: "imds",
		Fix: "IMDSv2 token requests must be allowed: aws ec2 modify-instance-metadata-options --http-tokens required --http-endpoint enabled; haagent never falls back to IMDSv1"})
	IMDSHopLimit = register(Entry{Code: "IMDS_HOP_LIMIT", Severity: Error, Blocking: true, Service: "imds",
		Fix: "raise the metadata hop limit: aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2 (CircleCI's containers need 2 as well)"})

	// S3 fetch
	S3AccessDenied = register(Entry{Code: "S3_ACCESS_DENIED", Severity: Error, Blocking: true, Service: "s3",
		Fix: "grant the instance role s3:GetObject on the bucket prefix and s3:ListBucket on the bucket (examples/iam-policy.json)"})
	S3BucketMissing = register(Entry{Code: "S3_BUCKET_MISSING", Severity: Error, Blocking: true, Service: "s3",
		Fix: "check source.bucket in the haagent config: the bucket does not exist (or is in another partition)"})
	S3CredentialsInvalid = register(Entry{Code: "S3_CREDENTIALS_INVALID", Severity: Error, Blocking: true, Service: "s3",
		Fix: "the AWS credentials are wrong: check the instance profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in /etc/default/haagent"})
	S3ObjectMissing = register(Entry{Code: "S3_OBJECT_MISSING", Severity: Error, Blocking: true, Service: "s3",
		Fix: "upload the missing object to the bucket"})
	S3PrefixEmpty = register(Entry{Code: "S3_PREFIX_EMPTY", Severity: Error, Blocking: true, Service: "s3",
		Fix: "upload the directory: aws s3 cp DIR s3://BUCKET/PREFIX --recursive"})
	S3KeyRefused = register(Entry{Code: "S3_KEY_REFUSED", Severity: Error, Blocking: true, Service: "s3",
		Fix: "rename or delete the object: its key would write outside its destination directory"})
	S3Unreachable = register(Entry{Code: "S3_UNREACHABLE", Severity: Error, Blocking: true, Service: "s3",
		Fix: "check the instance's route to S3 (VPC endpoint or NAT), HTTPS_PROXY/NO_PROXY in /etc/default/haagent, and the S3 endpoint setting"})
	S3FetchFailed = register(Entry{Code: "S3_FETCH_FAILED", Severity: Error, Blocking: true, Service: "s3",
		Fix: "see the evidence; haagent retries transient errors by itself"})
	S3OfflineLastGood = register(Entry{Code: "S3_OFFLINE_LAST_GOOD", Severity: Warning, Blocking: false, Service: "s3",
		Fix: "S3 could not be reached; this reboot goes on with the files of the last completed boot. Restore the route to S3 so changes in the bucket are picked up"})
	KeysPrefixEmpty = register(Entry{Code: "KEYS_PREFIX_EMPTY", Severity: Warning, Blocking: false, Service: "s3",
		Fix: "normal on a brand-new install (CircleCI creates its keys on first start). On a replacement instance it means the keys were never backed up: copy them to s3://BUCKET/PREFIX/circleci-encryption-keys/ before CircleCI starts"})
	LocalOnlyFiles = register(Entry{Code: "LOCAL_ONLY_FILES", Severity: Warning, Blocking: false, Service: "s3",
		Fix: "these files exist on the machine but not in the bucket; haagent never deletes them. Upload them if they must survive a replacement, or remove them by hand"})
	S3TLSUntrusted = register(Entry{Code: "S3_TLS_UNTRUSTED", Severity: Error, Blocking: true, Service: "s3",
		Fix: "the S3 endpoint's certificate was refused: for a CA of your own (an on-premises store, a TLS-inspecting proxy) put its PEM in a file on the machine and name it in source.ca_file; for a name mismatch or an expired certificate, fix the certificate or source.endpoint"})

	// session cookie key
	CookieKeyInvalid = register(Entry{Code: "COOKIE_KEY_INVALID", Severity: Error, Blocking: true, Service: "cookie-key",
		Fix: "the object session-cookie-key must hold exactly 16 printable ASCII characters; fix or delete it (deleting logs every user out once)"})
	CookieKeyNotSaved = register(Entry{Code: "COOKIE_KEY_NOT_SAVED", Severity: Warning, Blocking: false, Service: "cookie-key",
		Fix: "grant the instance role s3:PutObject on PREFIX/session-cookie-key, or upload the key yourself; until then a replacement instance logs every user out"})
	CookieKeyUnavailable = register(Entry{Code: "COOKIE_KEY_UNAVAILABLE", Severity: Error, Blocking: true, Service: "cookie-key",
		Fix: "S3 could not tell whether a session cookie key exists and none is on the machine; haagent will not invent one (it would log every user out). Fix S3 access; haagent retries"})
	CookieKeyLocalOnly = register(Entry{Code: "COOKIE_KEY_LOCAL_ONLY", Severity: Warning, Blocking: false, Service: "cookie-key",
		Fix: "S3 could not be read; the key already on the machine is kept. Fix S3 access so replacements keep the same key"})

	// CircleCI's file layout: the bucket's circle-installation-customizations (layout work)
	CookieKeyOverridden = register(Entry{Code: "COOKIE_KEY_OVERRIDDEN", Severity: Warning, Blocking: false, Service: "cookie-key",
		Fix: "the bucket's circle-installation-customizations sets CIRCLE_SECRETS_SESSION_COOKIE_KEY to another key than the session-cookie-key object, whose key is used: remove the line from the bucket's copy (haagent writes it), or, if that line holds the key your users' sessions use, put it in session-cookie-key"})

	// settings files
	ConfigSyntax = register(Entry{Code: "CONFIG_SYNTAX", Severity: Error, Blocking: true, Service: "settings",
		Fix: "fix the shell syntax at the position shown, in the bucket's copy of the file"})
	SettingMissing = register(Entry{Code: "SETTING_MISSING", Severity: Error, Blocking: true, Service: "settings",
		Fix: "set the variable in a file of circleconfig/shared/ in the bucket"})
	SettingRefused = register(Entry{Code: "SETTING_REFUSED", Severity: Error, Blocking: true, Service: "settings",
		Fix: "write the value out literally: settings files hold only NAME=value or export NAME=value lines"})

	// network and TLS, shared by every probe
	URIMalformed = register(Entry{Code: "URI_MALFORMED", Severity: Error, Blocking: true, Service: "network",
		Fix: "percent-encode special characters in the user name and password (@ is %40, / is %2F, : is %3A)"})
	DNSNotFound = register(Entry{Code: "DNS_NOT_FOUND", Severity: Error, Blocking: true, Service: "network",
		Fix: "the host name does not resolve from this machine: check the name, the VPC's DNS settings and any private hosted zone"})
	TCPRefused = register(Entry{Code: "TCP_REFUSED", Severity: Error, Blocking: true, Service: "network",
		Fix: "nothing listens on that port: check the port, and that the server listens on its network address, not only on localhost"})
	TCPTimeout = register(Entry{Code: "TCP_TIMEOUT", Severity: Error, Blocking: true, Service: "network",
		Fix: "no answer at all: a security group, network ACL or firewall drops the traffic; allow this instance to reach that port"})
	ProtocolTimeout = register(Entry{Code: "PROTOCOL_TIMEOUT", Severity: Error, Blocking: true, Service: "network",
		Fix: "the port accepts connections but does not answer the protocol: check that it is the right service and port, and that the server is not overloaded"})
	TLSUnknownAuthority = register(Entry{Code: "TLS_UNKNOWN_AUTHORITY", Severity: Error, Blocking: false, Service: "network",
		Fix: "put the issuing CA certificate in the bucket's ca-certificates/ prefix (installed into /usr/local/share/ca-certificates as .crt)"})
	TLSHostnameMismatch = register(Entry{Code: "TLS_HOSTNAME_MISMATCH", Severity: Error, Blocking: false, Service: "network",
		Fix: "connect with a name the certificate holds, or reissue the certificate with this name in its subject alternative names"})
	TLSExpired = register(Entry{Code: "TLS_EXPIRED", Severity: Error, Blocking: false, Service: "network",
		Fix: "renew the server certificate (and check this machine's clock: timedatectl)"})
	TLSRequired = register(Entry{Code: "TLS_REQUIRED", Severity: Error, Blocking: true, Service: "network",
		Fix: "make both sides agree: enable TLS on the server, or match the client setting to what the server offers"})
	TLSOff = register(Entry{Code: "TLS_OFF", Severity: Info, Blocking: false, Service: "network",
		Fix: "the server offers no TLS: connection settings and data cross the network in clear text"})
	ProbeInconclusive = register(Entry{Code: "PROBE_INCONCLUSIVE", Severity: Warning, Blocking: false, Service: "network",
		Fix: "haagent could not tell; see the evidence"})

	// reachability is what DNS and TCP say about a server, true for every client of it: when
	// one of them fires for a host, nothing a PostgreSQL, MongoDB or Vault probe says about the
	// same host can have been observed, so it is noise (DependsOn; Fold).
	reachability = []Code{DNSNotFound, TCPRefused, TCPTimeout}
	// verifiedServer adds what the server's certificate says: after it, the PostgreSQL and
	// Vault probes send no credential and stop, so a PG_* or VAULT_* code for that server
	// cannot be this run's observation. Not MongoDB's: its probe goes on unverified (isMaster
	// only) and what it learns there (a replica set name that does not match, no primary) is
	// true and has a fix of its own. Not TLS_REQUIRED either, one client's setting against the
	// server (Vault's probe sent to PostgreSQL's port says nothing about PostgreSQL's
	// password), nor TLS_OFF, after which a server is still asked what it can be asked.
	verifiedServer = append(slices.Clip(reachability), TLSUnknownAuthority, TLSHostnameMismatch, TLSExpired)

	// PostgreSQL
	PGAuthFailed = register(Entry{Code: "PG_AUTH_FAILED", Severity: Error, Blocking: true, Service: "postgres", DependsOn: verifiedServer,
		Fix: "check POSTGRES_USER and POSTGRES_PASSWORD against the role (ALTER ROLE circle PASSWORD '...')"})
	PGHBARejected = register(Entry{Code: "PG_HBA_REJECTED", Severity: Error, Blocking: true, Service: "postgres", DependsOn: verifiedServer,
		Fix: "add a pg_hba.conf line (or RDS security settings) admitting this user from this host, with TLS as the server requires"})
	PGDatabaseMissing = register(Entry{Code: "PG_DATABASE_MISSING", Severity: Error, Blocking: true, Service: "postgres", DependsOn: verifiedServer,
		Fix: "create the database: CREATE DATABASE name OWNER circle;"})
	PGConnectDenied = register(Entry{Code: "PG_CONNECT_DENIED", Severity: Error, Blocking: true, Service: "postgres", DependsOn: verifiedServer,
		Fix: "GRANT CONNECT ON DATABASE name TO circle;"})
	PGExtensionMissing = register(Entry{Code: "PG_EXTENSION_MISSING", Severity: Error, Blocking: true, Service: "postgres", DependsOn: verifiedServer,
		Fix: "install the extension in that database as a superuser"})
	PGVersionUnsupported = register(Entry{Code: "PG_VERSION_UNSUPPORTED", Severity: Error, Blocking: true, Service: "postgres", DependsOn: verifiedServer,
		Fix: "CircleCI needs PostgreSQL 9.5 or later: upgrade the server"})
	PGReadOnly = register(Entry{Code: "PG_READ_ONLY", Severity: Error, Blocking: true, Service: "postgres", DependsOn: verifiedServer,
		Fix: "point POSTGRES_HOST at the primary (the writer endpoint on RDS), not a replica"})

	// MongoDB
	MongoAuthFailed = register(Entry{Code: "MONGO_AUTH_FAILED", Severity: Error, Blocking: true, Service: "mongo", DependsOn: reachability,
		Fix: "check the user name and password in the URI; percent-encode special characters. On MongoDB 3.x a user created before 3.0 may hold only MONGODB-CR credentials: upgrade them with db.adminCommand({authSchemaUpgrade: 1})"})
	MongoReplsetMismatch = register(Entry{Code: "MONGO_REPLSET_MISMATCH", Severity: Error, Blocking: true, Service: "mongo", DependsOn: reachability,
		Fix: "make replicaSet= in the URIs match the set's name (rs.conf()._id)"})
	MongoNoPrimary = register(Entry{Code: "MONGO_NO_PRIMARY", Severity: Error, Blocking: true, Service: "mongo", DependsOn: reachability,
		Fix: "a majority of members must be up and reach each other to elect a primary"})
	MongoMemberUnreachable = register(Entry{Code: "MONGO_MEMBER_UNREACHABLE", Severity: Error, Blocking: true, Service: "mongo", DependsOn: reachability,
		Fix: "make every member's advertised host name resolve and reach from this machine, or rename the member"})
	MongoPrivilegeMissing = register(Entry{Code: "MONGO_PRIVILEGE_MISSING", Severity: Error, Blocking: true, Service: "mongo", DependsOn: reachability,
		Fix: "grant the user readWrite on the database"})
	MongoVersionLimited = register(Entry{Code: "MONGO_VERSION_LIMITED", Severity: Info, Blocking: false, Service: "mongo", DependsOn: reachability,
		Fix: "nothing to do if the services work with this server: haagent could not check the password and privileges (MongoDB before 3.0, or an authMechanism other than SCRAM-SHA-1 before 3.6)"})
	MongoNoReplicaSetInURI = register(Entry{Code: "MONGO_NO_REPLICA_SET_IN_URI", Severity: Warning, Blocking: false, Service: "mongo", DependsOn: reachability,
		Fix: "add replicaSet=NAME to the URIs and list the members as seeds: a URI naming one host makes the driver talk to that host alone, which after a failover is no longer the primary"})

	// Vault. The probe names the command line of the server's version in its fix (0.7, the
	// runbook's: vault unseal, vault token-create, vault mount, vault policy-write); these
	// defaults give both.
	VaultSchemeMismatch = register(Entry{Code: "VAULT_SCHEME_MISMATCH", Severity: Error, Blocking: true, Service: "vault", DependsOn: verifiedServer,
		Fix: "make VAULT__SCHEME match the listener: https for a TLS listener"})
	VaultSealed = register(Entry{Code: "VAULT_SEALED", Severity: Error, Blocking: true, Service: "vault", DependsOn: verifiedServer,
		Fix: "unseal Vault with the required number of unseal keys: vault operator unseal (Vault 0.x: vault unseal), repeated per key holder"})
	VaultUninitialized = register(Entry{Code: "VAULT_UNINITIALIZED", Severity: Error, Blocking: true, Service: "vault", DependsOn: verifiedServer,
		Fix: "initialize Vault (vault operator init; Vault 0.x: vault init), unseal it, mount transit and issue the services' token"})
	VaultTokenInvalid = register(Entry{Code: "VAULT_TOKEN_INVALID", Severity: Error, Blocking: true, Service: "vault", DependsOn: verifiedServer,
		Fix: "issue a new periodic token: vault token create -policy=NAME -period=1h (Vault 0.x: vault token-create -policy=NAME -period=1h), and put it in VAULT__CLIENT_TOKEN"})
	VaultTokenExpiring = register(Entry{Code: "VAULT_TOKEN_EXPIRING", Severity: Error, Blocking: false, Service: "vault", DependsOn: verifiedServer,
		Fix: "issue a renewable periodic token without an explicit max TTL: vault token create -policy=NAME -period=1h (Vault 0.x: vault token-create)"})
	VaultPermissionDenied = register(Entry{Code: "VAULT_PERMISSION_DENIED", Severity: Error, Blocking: true, Service: "vault", DependsOn: verifiedServer,
		Fix: "attach a policy granting the transit paths to the token"})
	VaultTransitMissing = register(Entry{Code: "VAULT_TRANSIT_MISSING", Severity: Error, Blocking: true, Service: "vault", DependsOn: verifiedServer,
		Fix: "vault secrets enable transit (Vault 0.x: vault mount transit), and set VAULT__TRANSIT_MOUNT to its path"})
	VaultRedirect = register(Entry{Code: "VAULT_REDIRECT", Severity: Warning, Blocking: false, Service: "vault", DependsOn: verifiedServer,
		Fix: "point VAULT__SCHEME, VAULT__HOST and VAULT__PORT at the active Vault node or at a load balancer that sends requests to it"})

	// the frontend watch
	DockerNotAnswering = register(Entry{Code: "DOCKER_NOT_ANSWERING", Severity: Warning, Blocking: false, Service: "watch",
		Fix: "dockerd accepts connections but does not answer: look at journalctl -u docker and `systemctl status docker`; `systemctl restart docker` restarts it (CircleCI's containers restart with it). If it persists, the guard may replace the instance"})
	FrontendCrashLoop = register(Entry{Code: "FRONTEND_CRASH_LOOP", Severity: Error, Blocking: false, Service: "frontend",
		Fix: "read the frontend's last lines (journalctl -u haagent CONTAINER_NAME=frontend) and the probes' findings: a database or Vault setting is the usual cause"})

	// encryption keys backup
	KeysNotBackedUp = register(Entry{Code: "KEYS_NOT_BACKED_UP", Severity: Error, Blocking: false, Service: "keys",
		Fix: "grant the instance role s3:PutObject on the keys prefix; a replacement instance cannot decrypt CircleCI's data without them"})
	KeysBackupSkipped = register(Entry{Code: "KEYS_BACKUP_SKIPPED", Severity: Warning, Blocking: false, Service: "keys",
		Fix: "restore the route to S3; haagent compares the keys with the bucket at the next boot, or run haagent backup keys"})
	KeysConflict = register(Entry{Code: "KEYS_CONFLICT", Severity: Error, Blocking: false, Service: "keys",
		Fix: "two different keys carry one name and neither is replaced: decide which copy CircleCI's data was encrypted with (README: Encryption keys), then move the other out of the way by hand: the bucket's with aws s3 mv s3://BUCKET/PREFIX/circleci-encryption-keys/NAME s3://BUCKET/PREFIX/circleci-encryption-keys-conflicts/NAME, or the machine's with mv /data/circle/circleci-encryption-keys/NAME /root/NAME.conflict; haagent then copies the kept one across"})

	// Auto Scaling
	ASGNotMember = register(Entry{Code: "ASG_NOT_MEMBER", Severity: Info, Blocking: false, Service: "asg",
		Fix: "the instance is in no Auto Scaling group: nothing replaces it when it dies. Launch it from the Services machine's single-member group (examples/launch-template.json), or set asg.enabled: false"})
	ASGAPIFailed = register(Entry{Code: "ASG_API_FAILED", Severity: Warning, Blocking: false, Service: "asg",
		Fix: "grant the instance role the Auto Scaling actions in examples/iam-policy.json and check the route to the Auto Scaling endpoint; the boot goes on without them"})
	ASGHealthCheckNotEC2 = register(Entry{Code: "ASG_HEALTH_CHECK_NOT_EC2", Severity: Warning, Blocking: false, Service: "asg",
		Fix: "use EC2 health checks on the Services machine's group (aws autoscaling update-auto-scaling-group --auto-scaling-group-name GROUP --health-check-type EC2): a load balancer check fails during every first install and while a database is down, and the group then replaces the instance whatever haagent decides"})
	ASGHookMissing = register(Entry{Code: "ASG_HOOK_MISSING", Severity: Warning, Blocking: false, Service: "asg",
		Fix: "create the launch hook: aws autoscaling put-lifecycle-hook --auto-scaling-group-name GROUP --lifecycle-hook-name HOOK --lifecycle-transition autoscaling:EC2_INSTANCE_LAUNCHING --default-result CONTINUE --heartbeat-timeout 900"})
	ASGHookAbandon = register(Entry{Code: "ASG_HOOK_ABANDON", Severity: Error, Blocking: false, Service: "asg",
		Fix: "make the hook default to CONTINUE (aws autoscaling put-lifecycle-hook ... --default-result CONTINUE): with ABANDON a boot that outlasts the hook (a slow first install, an S3 or database outage) terminates the instance and the next one starts over, for ever"})
	ASGHookNotLaunch = register(Entry{Code: "ASG_HOOK_NOT_LAUNCH", Severity: Warning, Blocking: false, Service: "asg",
		Fix: "asg.lifecycle_hook must name the group's autoscaling:EC2_INSTANCE_LAUNCHING hook"})
	ASGGroupSize = register(Entry{Code: "ASG_GROUP_SIZE", Severity: Warning, Blocking: false, Service: "asg",
		Fix: "the Services machine's group must hold exactly one instance: set min, max and desired capacity to 1 (two Services machines against the same databases corrupt CircleCI's data)"})
	ASGLifecycleExpired = register(Entry{Code: "ASG_LIFECYCLE_EXPIRED", Severity: Warning, Blocking: false, Service: "asg",
		Fix: "the launch lifecycle action ended before the boot completed (the hook's heartbeat or global timeout passed); raise the hook's --heartbeat-timeout, and check it defaults to CONTINUE"})
	ASGReplacementWithheld = register(Entry{Code: "ASG_REPLACEMENT_WITHHELD", Severity: Warning, Blocking: false, Service: "asg",
		Fix: "the frontend is failing and a replacement would not help: fix what the reason names; haagent keeps probing and decides again"})
	ASGReplacementRequested = register(Entry{Code: "ASG_REPLACEMENT_REQUESTED", Severity: Warning, Blocking: false, Service: "asg",
		Fix: "haagent marked this instance unhealthy so the group replaces it; read the reason and the frontend's last lines, and check the new instance's journal"})

	// fetched files
	FileSyntax = register(Entry{Code: "FILE_SYNTAX", Severity: Error, Blocking: true, Service: "files",
		Fix: "fix the JSON at the position shown in the bucket's copy (a lost brace, a trailing comma, a typographic quote)"})
	FileInvalid = register(Entry{Code: "FILE_INVALID", Severity: Error, Blocking: true, Service: "files",
		Fix: "fix the file in the bucket as the summary says"})
	FileUnknownKey = register(Entry{Code: "FILE_UNKNOWN_KEY", Severity: Warning, Blocking: false, Service: "files",
		Fix: "remove the key or correct its spelling"})
	LicenseMissing = register(Entry{Code: "LICENSE_MISSING", Severity: Error, Blocking: true, Service: "files",
		Fix: "upload the CircleCI licence (license.rli) to the bucket"})
	SettingsDrift = register(Entry{Code: "SETTINGS_DRIFT", Severity: Warning, Blocking: false, Service: "files",
		Fix: "Replicated reads settings.conf only at install time: apply the change in the Replicated console (https://HOST:8800/settings), or run haagent run --reinstall in a maintenance window"})

	// modes and owners of the files written (who reads them: the Replicated daemon runs as
	// user replicated in group docker and sees only /etc, mounted read-only)
	FileUnreadableByReplicated = register(Entry{Code: "FILE_UNREADABLE_BY_REPLICATED", Severity: Error, Blocking: true, Service: "files",
		Fix: "keep the file under /etc and make it and every directory above it readable through group docker: chgrp docker FILE && chmod 0640 FILE (haagent's default for the licence and settings.conf; files.NAME.group: docker)"})
	FileOwnerUnresolved = register(Entry{Code: "FILE_OWNER_UNRESOLVED", Severity: Error, Blocking: true, Service: "files",
		Fix: "create the user or group the config names (groupadd NAME), or correct files.NAME.user/group (or give uid/gid)"})
	FileSymlinkNotFollowed = register(Entry{Code: "FILE_SYMLINK_NOT_FOLLOWED", Severity: Warning, Blocking: false, Service: "files",
		Fix: "replace the symbolic link with a plain file (rm the link; haagent writes the file on its next run)"})

	// CA certificates
	CACertInvalid = register(Entry{Code: "CA_CERT_INVALID", Severity: Error, Blocking: false, Service: "ca-certs",
		Fix: "the bucket's ca-certificates/ prefix takes PEM CA certificates only: remove keys, leaf certificates and other files"})
	CACertExpired = register(Entry{Code: "CA_CERT_EXPIRED", Severity: Error, Blocking: false, Service: "ca-certs",
		Fix: "replace the expired CA certificate in the bucket (and the server certificates it signed)"})
	CACertExpiring = register(Entry{Code: "CA_CERT_EXPIRING", Severity: Warning, Blocking: false, Service: "ca-certs",
		Fix: "renew the CA certificate before it expires"})

	// Issue 14 (encryption keys never lost, local disk errors, CA files): one block for the merge.
	LocalWriteFailed = register(Entry{Code: "LOCAL_WRITE_FAILED", Severity: Error, Blocking: true, Service: "files",
		Fix: "the bytes arrived but this machine could not write them: free space (df -h), remount read-write, or fix the directory's permissions; S3 is not at fault and haagent does not retry it"})
	KeysEmpty = register(Entry{Code: "KEYS_EMPTY", Severity: Error, Blocking: true, Service: "keys",
		Fix: "an encryption key is empty (0 bytes): it is never installed nor backed up. Restore the key's real content from the machine or backup that has it: aws s3 cp KEYFILE s3://BUCKET/PREFIX/circleci-encryption-keys/NAME (for a bucket copy) or put the file back in /data/circle/circleci-encryption-keys/"})
	KeysMissing = register(Entry{Code: "KEYS_MISSING", Severity: Error, Blocking: true, Service: "keys",
		Fix: "this deployment existed before but the bucket holds no encryption keys: CircleCI would create new ones and its data encrypted with the old ones would be unreadable. Copy the keys from the old machine (or its backup) to s3://BUCKET/PREFIX/circleci-encryption-keys/ before booting; haagent stops before the installer until then"})
	KeysPathNotFile = register(Entry{Code: "KEYS_PATH_NOT_FILE", Severity: Error, Blocking: false, Service: "keys",
		Fix: "a symbolic link (or device) stands where an encryption key goes: haagent neither follows nor replaces it, and the rest of the files are installed. If it points at the real key, replace it with the file (cp --remove-destination \"$(readlink -f PATH)\" PATH); if it is stray, move it aside so haagent installs the bucket's key"})

	// Issue 18, the AWS side of the stable address (internal/address): one block for the merge.
	AddressHeld = register(Entry{Code: "ADDRESS_HELD", Severity: Error, Blocking: true, Service: "address",
		Fix: "another instance that may still serve holds address.private_ip (the summary says which and why): haagent never takes an address from a live machine and asks again every address.retry_every. private_ip needs a replacement that terminates the old instance first (instance maintenance policy MinHealthyPercentage=0,MaxHealthyPercentage=100): terminate the holder (aws autoscaling terminate-instance-in-auto-scaling-group --instance-id INSTANCE --no-should-decrement-desired-capacity), or free the address (aws ec2 unassign-private-ip-addresses --network-interface-id ENI --private-ip-addresses IP)"})
	AddressSelfLeaving = register(Entry{Code: "ADDRESS_SELF_LEAVING", Severity: Error, Blocking: true, Service: "address",
		Fix: "this instance is Unhealthy, Terminating, Standby or Detaching in its group, so it does not take address.private_ip (its replacement needs it); nothing to do if the group is replacing it. To keep this instance: aws autoscaling set-instance-health --instance-id INSTANCE --health-status Healthy, or aws autoscaling exit-standby"})
	AddressLaunchFirst = register(Entry{Code: "ADDRESS_LAUNCH_FIRST", Severity: Error, Blocking: false, Service: "address",
		Fix: "the group's instance maintenance policy starts a replacement before it terminates the old instance, and with address.private_ip the new one waits for the address the old one keeps until the lifecycle hook times out: aws autoscaling update-auto-scaling-group --auto-scaling-group-name GROUP --instance-maintenance-policy MinHealthyPercentage=0,MaxHealthyPercentage=100, and start instance refreshes with --preferences MinHealthyPercentage=0,MaxHealthyPercentage=100"})
	AddressNotInSubnet = register(Entry{Code: "ADDRESS_NOT_IN_SUBNET", Severity: Error, Blocking: true, Service: "address",
		Fix: "address.private_ip is not in this instance's subnet, and a private IP cannot leave its subnet: confine the group to the subnet that holds it (aws autoscaling update-auto-scaling-group --auto-scaling-group-name GROUP --vpc-zone-identifier SUBNET), or use address.route53, which works across subnets and zones"})
	AddressAPIDenied = register(Entry{Code: "ADDRESS_API_DENIED", Severity: Error, Blocking: true, Service: "address",
		Fix: "add the statement for this address mode from examples/iam-policy.json to the instance role; haagent retries the step"})
	AddressAPIFailed = register(Entry{Code: "ADDRESS_API_FAILED", Severity: Error, Blocking: true, Service: "address",
		Fix: "check the route to the EC2 or Route 53 endpoint (a VPC endpoint or NAT, HTTPS_PROXY/NO_PROXY in /etc/default/haagent) and address.endpoint / address.route53.endpoint; haagent retries the step"})
	AddressNotAssigned = register(Entry{Code: "ADDRESS_NOT_ASSIGNED", Severity: Error, Blocking: true, Service: "address",
		Fix: "EC2 accepted the assignment but the interface does not list the address when read back: check the interface in the console (aws ec2 describe-network-interfaces --network-interface-ids ENI) and that no other tool moves the address; haagent retries the step"})
	AddressZoneMissing = register(Entry{Code: "ADDRESS_ZONE_MISSING", Severity: Error, Blocking: true, Service: "address",
		Fix: "address.route53.zone_id names no hosted zone this account sees: find the zone's id with aws route53 list-hosted-zones-by-name --dns-name ZONE and correct the config"})
	AddressDNSNotInSync = register(Entry{Code: "ADDRESS_DNS_NOT_INSYNC", Severity: Warning, Blocking: false, Service: "address",
		Fix: "Route 53 accepted the record but did not report the change INSYNC within address.route53.sync_timeout: builders may resolve the old address until it propagates. Check aws route53 get-change --id CHANGE; a change stuck PENDING for long is a Route 53 matter (AWS Health Dashboard)"})

	// Replicated installer
	InstallerDownloadFailed = register(Entry{Code: "INSTALLER_DOWNLOAD_FAILED", Severity: Error, Blocking: true, Service: "replicated",
		Fix: "check replicated.installer_url, the route to it (HTTPS_PROXY) and its TLS certificate"})
	InstallerChecksumMismatch = register(Entry{Code: "INSTALLER_CHECKSUM_MISMATCH", Severity: Error, Blocking: true, Service: "replicated",
		Fix: "the installer is not the one pinned by replicated.sha256: verify the new script and update the pin"})
	InstallerFailed = register(Entry{Code: "INSTALLER_FAILED", Severity: Error, Blocking: true, Service: "replicated",
		Fix: "read the installer's output (journalctl -u haagent-replicated-install); fix the cause and haagent reruns it"})
	InstallerTimeout = register(Entry{Code: "INSTALLER_TIMEOUT", Severity: Error, Blocking: true, Service: "replicated",
		Fix: "the installer ran past replicated.timeout: check the network to the Replicated and Docker registries, or raise the timeout"})
	// the installer's contract (exit 0 is not success; its arguments; its download)
	InstallerNothingInstalled = register(Entry{Code: "INSTALLER_NOTHING_INSTALLED", Severity: Error, Blocking: true, Service: "replicated",
		Fix: "the installer exited 0 without installing (it gave up at a question it could not ask): read its last lines; bake a pinned Docker into the AMI (so haagent passes no-docker) or install the Docker version it recommends, then haagent runs it again"})
	InstallerArgUnknown = register(Entry{Code: "INSTALLER_ARG_UNKNOWN", Severity: Error, Blocking: true, Service: "replicated",
		Fix: "remove or correct the argument in replicated.extra_args: the installer exits 1 on a parameter it does not know, haagent sets local-address, the proxy and no-docker itself, install-docker-only, is-migration and airgap make no CircleCI Services machine, and a value may hold no whitespace"})
	InstallerRedirectRefused = register(Entry{Code: "INSTALLER_REDIRECT_REFUSED", Severity: Error, Blocking: true, Service: "replicated",
		Fix: "point replicated.installer_url at an https URL that does not redirect to http (or keep the script in the bucket: s3://bucket/key with replicated.sha256)"})
	InstallerUnpinned = register(Entry{Code: "INSTALLER_UNPINNED", Severity: Warning, Blocking: false, Service: "replicated",
		Fix: "pin the installer: set replicated.sha256 to the sha256 this run logged once you have read the script, or keep a reviewed copy in the bucket (installer_url: s3://bucket/key)"})

	// The supervisor of monitors (issue 15): what it says about a monitor, filed under its name.
	MonitorFailing = register(Entry{Code: "MONITOR_FAILING", Severity: Warning, Blocking: false, Service: "haagent",
		Fix: "a monitor keeps failing: read its last error (the evidence) and `journalctl -u haagent HAAGENT_MONITOR=NAME`, and fix what it names (a permission, a route, the Docker engine); haagent keeps restarting it with backoff"})
	MonitorPanicked = register(Entry{Code: "MONITOR_PANICKED", Severity: Error, Blocking: false, Service: "haagent",
		Fix: "a bug in haagent: report it with the stack logged just before (journalctl -u haagent HAAGENT_MONITOR=NAME); haagent restarts the monitor meanwhile"})
	MonitorStalled = register(Entry{Code: "MONITOR_STALLED", Severity: Error, Blocking: false, Service: "haagent",
		Fix: "a monitor's loop is blocked, so haagent stopped feeding systemd's watchdog and systemd restarts haagent (journalctl -u haagent shows the watchdog timeout); if it recurs, report it with `journalctl -u haagent HAAGENT_MONITOR=NAME`"})

	// Issue 18, the OS side of the stable address (iface): one block for the merge.
	AddressNotHere = register(Entry{Code: "ADDRESS_NOT_HERE", Severity: Error, Blocking: true, Service: "address",
		Fix: "the address the builders use must reach this machine before CircleCI is installed on it: for address.private_ip, EC2 must have assigned it to this instance's primary interface (aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values=IP) and `ip -4 addr` show it; for address.route53, `getent hosts NAME` must answer this instance's private IP (the private hosted zone associated with this VPC, enableDnsSupport on)"})
	AddressUnreachable = register(Entry{Code: "ADDRESS_UNREACHABLE", Severity: Error, Blocking: false, Service: "address",
		Fix: "the Nomad server (4647) and the frontend (443) must accept connections on the stable address: check the nomad and frontend containers (docker ps; replicatedctl app status) and that they publish on all addresses; the builders also need the Services security group to allow TCP 4647 and 443 from them"})
	AddressRewritten = register(Entry{Code: "ADDRESS_REWRITTEN", Severity: Warning, Blocking: false, Service: "address",
		Fix: "Replicated was installed on this machine with another local address: haagent rewrote PRIVATE_ADDRESS in /etc/default/replicated and /etc/default/replicated-operator and restarted replicated and replicated-operator; restart the application too (replicatedctl app stop, then replicatedctl app start) so its containers take the new address"})
)
