package probes

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"crypto/tls"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/settings"
)

// PostgresOptions say what CircleCI needs from PostgreSQL. A missing database of Databases or
// extension of Extensions blocks the install; the optional ones are warnings.
type PostgresOptions struct {
	Databases          []string
	Extensions         map[string][]string
	OptionalDatabases  []string
	OptionalExtensions map[string][]string
}

// DefaultPostgres is what CircleCI Server 2.x needs (config.DefaultPostgresProbe: the
// runbook's five databases required, the HA page's other three and uuid-ossp everywhere
// optional).
func DefaultPostgres() PostgresOptions {
	return postgresOptions(config.DefaultPostgresProbe())
}

func postgresOptions(p config.PostgresProbe) PostgresOptions {
	return PostgresOptions{Databases: p.Databases, Extensions: p.Extensions, OptionalDatabases: p.OptionalDatabases, OptionalExtensions: p.OptionalExtensions}
}

// minPGVersion is 9.5, as server_version_num.
const minPGVersion = 90500

// pgDB is one database to check and whether it, and each of its extensions, is required.
type pgDB struct {
	name     string
	required bool
	exts     []pgExt
}

type pgExt struct {
	name     string
	required bool
}

type pgTarget struct {
	ep        endpoint
	user, pwd string
	databases []pgDB
	source    string // the variables it came from
}

// pgDatabases lists the databases of o, required ones first, each once. A database that
// named is forced required (a CIRCLE_SECRETS_POSTGRES_*_URI: a service is set to use it).
func (o PostgresOptions) pgDatabases(named ...string) []pgDB {
	var out []pgDB
	seen := map[string]int{}
	add := func(db string, required bool) {
		if i, ok := seen[db]; ok {
			out[i].required = out[i].required || required
			return
		}
		seen[db] = len(out)
		out = append(out, pgDB{name: db, required: required})
	}
	if len(named) > 0 {
		for _, db := range named {
			add(db, true)
		}
	} else {
		for _, db := range o.Databases {
			add(db, true)
		}
		for _, db := range o.OptionalDatabases {
			add(db, false)
		}
	}
	for i := range out {
		req := map[string]bool{}
		for _, e := range o.Extensions[out[i].name] {
			if !req[e] {
				req[e] = true
				out[i].exts = append(out[i].exts, pgExt{e, true})
			}
		}
		for _, e := range o.OptionalExtensions[out[i].name] {
			if !req[e] {
				req[e] = true
				out[i].exts = append(out[i].exts, pgExt{e, false})
			}
		}
	}
	return out
}

func probePostgres(ctx context.Context, p *prober, s *settings.Settings) *result {
	res := &result{}
	var targets []pgTarget
	host, f1 := s.Require("postgres", "POSTGRES_HOST")
	port, f2 := s.Require("postgres", "POSTGRES_PORT")
	user, f3 := s.Require("postgres", "POSTGRES_USER")
	pwd, f4 := s.Require("postgres", "POSTGRES_PASSWORD")
	res.addAll(f1)
	res.addAll(f2)
	res.addAll(f3)
	res.addAll(f4)
	if len(f1)+len(f2)+len(f3)+len(f4) == 0 {
		if _, err := strconv.Atoi(port.Value); err != nil {
			res.add(findings.New(findings.URIMalformed, port.Where(), fmt.Sprintf("POSTGRES_PORT %q is not a port number", port.Value), ""))
		} else {
			targets = append(targets, pgTarget{
				ep:   endpoint{Host: host.Value, Port: port.Value, Target: fmt.Sprintf("%s@%s", user.Value, net.JoinHostPort(host.Value, port.Value))},
				user: user.Value, pwd: pwd.Value, databases: p.opts.Postgres.pgDatabases(), source: "POSTGRES_HOST/PORT/USER/PASSWORD",
			})
		}
	}
	for _, name := range s.Names("CIRCLE_SECRETS_POSTGRES_") {
		if !strings.HasSuffix(name, "_URI") {
			continue
		}
		v, fs := s.Require("postgres", name)
		if len(fs) > 0 {
			res.addAll(fs)
			continue
		}
		t, f := parsePGURI(name, v)
		if f != nil {
			res.add(*f)
			continue
		}
		t.databases = p.opts.Postgres.pgDatabases(t.databases[0].name)
		targets = append(targets, t)
	}
	seen := map[string]bool{}
	for _, t := range targets {
		key := fmt.Sprintf("%s\x00%s\x00%v", t.ep.addr(), t.user, t.databases)
		if seen[key] {
			continue
		}
		seen[key] = true
		// Another service's settings may lead to the same server: probed once (probes.go).
		p.once(ctx, "postgres", key+"\x00"+t.pwd+"\x00"+t.source, res, func(r *result) { p.postgresTarget(ctx, t, r) })
	}
	return res
}

// parsePGURI reads a postgres:// URI. An unescaped '@', '/' or space in the password is the
// usual mistake: it makes a URL parser see another host, port or database, and its error then
// quotes a piece of the password ("invalid port \":Hunter2\" after host"). So the URI is split
// the tolerant way (the user information runs to the last '@'), each part is checked on its own,
// and a finding names the part that is wrong, never a parser's text.
func parsePGURI(name string, v settings.Setting) (pgTarget, *findings.Finding) {
	bad := func(why string) (pgTarget, *findings.Finding) {
		f := findings.New(findings.URIMalformed, v.Where(), fmt.Sprintf("%s is not a valid PostgreSQL URI: %s", name, why), findings.URIEvidence(v.Value))
		return pgTarget{}, &f
	}
	const form = "postgres://USER:PASSWORD@HOST:PORT/DATABASE"
	parts, ok := findings.SplitURI(v.Value)
	if !ok {
		return bad("it does not start with postgres:// (the form is " + form + ")")
	}
	if parts.Scheme != "postgres" && parts.Scheme != "postgresql" {
		return bad("it does not start with postgres:// or postgresql:// (the form is " + form + ")")
	}
	if !parts.HasUserinfo || parts.User == "" {
		return bad("it names no user (the form is " + form + ")")
	}
	if u := findings.UnescapedIn(parts.User); len(u) > 0 {
		return bad("the user name holds " + strings.Join(u, ", ") + " unescaped; percent-encode it")
	}
	if u := findings.UnescapedIn(parts.Password); len(u) > 0 {
		return bad("the password holds " + strings.Join(u, ", ") + " unescaped; percent-encode it")
	}
	user, err1 := url.PathUnescape(parts.User)
	pwd, err2 := url.PathUnescape(parts.Password)
	if err1 != nil || err2 != nil {
		return bad("the user name or password holds a '%' that starts no valid escape (a literal '%' is %25)")
	}
	host, port := parts.HostPort, "5432"
	if h, p, err := net.SplitHostPort(parts.HostPort); err == nil {
		host, port = h, p
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	} else if strings.Contains(host, ":") {
		return bad("the part after '@' is not HOST or HOST:PORT (an IPv6 address goes in brackets)")
	}
	if host == "" {
		return bad("it names no host after the '@' (the form is " + form + ")")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return bad(fmt.Sprintf("the port after host %s is not a port number", host))
	}
	path, _, _ := strings.Cut(parts.Rest, "?")
	path, _, _ = strings.Cut(path, "#")
	db, err := url.PathUnescape(strings.TrimPrefix(path, "/"))
	if err != nil || db == "" || !strings.HasPrefix(path, "/") {
		return bad("it names no database after the host (the form is " + form + ")")
	}
	if strings.Contains(db, "/") {
		return bad("the database part holds a '/'")
	}
	return pgTarget{
		ep:   endpoint{Host: host, Port: port, Target: fmt.Sprintf("%s@%s/%s", user, net.JoinHostPort(host, port), db)},
		user: user, pwd: pwd, databases: []pgDB{{name: db, required: true}}, source: name,
	}, nil
}

type tlsMode int

const (
	tlsVerify tlsMode = iota
	tlsNoVerify
	tlsNone
)

func (m tlsMode) String() string {
	return [...]string{"TLS verified", "TLS, certificate not verified", "no TLS"}[m]
}

// postgresTarget checks one server. TLS is chosen as the services' drivers do with
// sslmode=prefer (their settings carry no sslmode): TLS when the server offers it, plain
// otherwise. haagent verifies the certificate on top and authenticates only to a verified
// server; an unverified one is asked which authentication it wants, and that is all.
func (p *prober) postgresTarget(ctx context.Context, t pgTarget, res *result) {
	defer res.stamp(len(res.findings), t.ep.addr())
	if f := p.reach(ctx, t.ep); f != nil {
		res.add(*f)
		res.check(Checked{Service: "postgres", Target: t.ep.Target})
		return
	}
	// The first databases one by one, until one connection is made: it says whether the
	// server is verified at all and carries the server's own checks, and a failure that
	// stops the probe (bad credentials) costs one attempt, not one per database. The rest,
	// each a TLS handshake and a SCRAM exchange of its own, concurrently: nine databases one
	// after another were most of the probe step. Their outcomes are applied in table order,
	// as if they had run one by one, so the findings and the checks read the same.
	rest := t.databases
	for len(rest) > 0 {
		d := rest[0]
		rest = rest[1:]
		o := p.pgDatabase(ctx, t, d, true)
		o.apply(res)
		if o.end {
			return
		}
		if o.connected {
			break
		}
	}
	outs := make([]pgOutcome, len(rest))
	var wg sync.WaitGroup
	for i, d := range rest {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i] = p.pgDatabase(ctx, t, d, false)
		}()
	}
	wg.Wait()
	for _, o := range outs {
		o.apply(res)
		if o.end {
			return
		}
	}
}

// pgOutcome is what the probe of one database found: applied to the result in table order.
type pgOutcome struct {
	findings []findings.Finding
	checked  Checked
	// connected: a verified connection was made (so the server's checks ran, when asked);
	// end: nothing after this database is probed (an unverified server, bad credentials).
	connected, end bool
}

func (o pgOutcome) apply(res *result) {
	res.addAll(o.findings)
	res.check(o.checked)
}

// pgDatabase probes one database of t: connects (TLS, verified, then authenticates), runs the
// server's checks when serverChecks, and the database's extensions.
func (p *prober) pgDatabase(ctx context.Context, t pgTarget, d pgDB, serverChecks bool) pgOutcome {
	var o pgOutcome
	db := d.name
	target := t.ep.Target
	if len(t.databases) > 1 {
		target += "/" + db
	}
	conn, err := p.pgConnect(ctx, t, db)
	if err != nil {
		mode, why := tlsVerify, findings.Code{}
		if f := tlsFinding(t.ep, err); f != nil {
			o.findings = append(o.findings, *f)
			mode, why = tlsNoVerify, f.Code
		} else if strings.Contains(err.Error(), "server refused TLS connection") {
			o.findings = append(o.findings, findings.New(findings.TLSOff, t.ep.Target, fmt.Sprintf("PostgreSQL at %s does not offer TLS", t.ep.addr()), ""))
			mode, why = tlsNone, findings.TLSOff
		}
		if mode != tlsVerify {
			// Every database would meet the same unverified server: it is asked once.
			o.findings = append(o.findings, p.pgUnverified(ctx, t, d, mode, why))
			o.checked, o.end = Checked{Service: "postgres", Target: t.ep.Target, Detail: mode.String()}, true
			return o
		}
		f, stop := pgFinding(t, d, mode, err)
		o.findings = append(o.findings, f)
		o.checked, o.end = Checked{Service: "postgres", Target: target, Detail: mode.String()}, stop
		return o
	}
	defer conn.Close(context.Background())
	o.connected = true
	ok := true
	if serverChecks {
		for _, f := range pgServerChecks(ctx, conn, t) {
			o.findings = append(o.findings, f)
			ok = false
		}
	}
	for _, f := range pgExtensions(ctx, conn, t, d) {
		o.findings = append(o.findings, f)
		ok = ok && f.Severity != findings.Error
	}
	o.checked = Checked{Service: "postgres", Target: target, OK: ok, Detail: tlsVerify.String()}
	return o
}

// pgConnect opens one connection over TLS with a verified certificate, the only kind on which
// haagent authenticates (whatever method the server asks for, as the services would).
func (p *prober) pgConnect(ctx context.Context, t pgTarget, db string) (*pgx.Conn, error) {
	// sslmode=disable only turns off pgx's own TLS choice and its plain fallback: cfg.TLSConfig,
	// set below, makes this connection TLS, verified.
	cs := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable", quoteKV(t.ep.Host), quoteKV(t.ep.Port), quoteKV(t.user), quoteKV(db))
	cfg, err := pgx.ParseConfig(cs)
	if err != nil {
		return nil, fmt.Errorf("building the connection settings for %s: %w", t.ep.Target, err)
	}
	cfg.Password = t.pwd
	cfg.Fallbacks = nil
	cfg.LookupFunc = p.opts.Resolver.LookupHost
	cfg.RuntimeParams["application_name"] = "haagent-probe"
	cfg.TLSConfig = &tls.Config{ServerName: t.ep.Host, RootCAs: p.opts.RootCAs, MinVersion: tls.VersionTLS12}
	return pgx.ConnectConfig(ctx, cfg)
}

// PostgreSQL's AuthenticationRequest codes (protocol "Message Formats", 'R').
const (
	authOK        = 0
	authCleartext = 3
	authMD5       = 5
	authGSS       = 7
	authSSPI      = 9
	authSASL      = 10
)

// pgAsked is what an unverified server answered the startup message with: an authentication
// request (code, and for SASL its mechanisms).
type pgAsked struct {
	code  uint32
	mechs []string
}

// maxPGStartupAnswer bounds the one message read from an unverified server: a real
// authentication request is a few bytes, an ErrorResponse a few hundred.
const maxPGStartupAnswer = 8 << 10

// pgAsk opens one connection to a server haagent could not verify (its certificate failed, or it
// refused TLS), sends the startup message, reads which authentication the server asks for and
// hangs up without answering. No proof of the password goes to such a server: not the password
// in clear, not an MD5 hash (it logs in as well as the password does), and not a SCRAM proof
// either: the client's proof is sent before the server proves anything, and a server that chose
// the salt and an iteration count of 1 tests password guesses against it offline for a few HMACs
// each. The services' drivers would answer (sslmode=prefer); haagent's probe must not be the one
// that gives the password away. A real server stays silent about a client that hangs up here, as
// psql does when it prompts for a password.
func (p *prober) pgAsk(ctx context.Context, t pgTarget, db string, mode tlsMode) (pgAsked, error) {
	conn, err := p.dialPG(ctx, t.ep)
	if err != nil {
		return pgAsked{}, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if mode == tlsNoVerify {
		req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		if _, err := conn.Write(req); err != nil {
			return pgAsked{}, fmt.Errorf("asking %s for TLS: %w", t.ep.addr(), err)
		}
		var b [1]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			return pgAsked{}, fmt.Errorf("asking %s for TLS: %w", t.ep.addr(), err)
		}
		if b[0] != 'S' {
			return pgAsked{}, fmt.Errorf("asking %s for TLS: it answered %q, having offered TLS on the connection before", t.ep.addr(), b[0])
		}
		tc := tls.Client(conn, &tls.Config{ServerName: t.ep.Host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // the verified attempt failed and was reported; nothing that proves the password is sent on this connection
		if err := tc.HandshakeContext(ctx); err != nil {
			return pgAsked{}, fmt.Errorf("TLS handshake with %s, without verification: %w", t.ep.addr(), err)
		}
		conn = tc
	}
	startup, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": t.user, "database": db, "application_name": "haagent-probe"}}).Encode(nil)
	if err != nil {
		return pgAsked{}, fmt.Errorf("building the startup message for %s: %w", t.ep.Target, err)
	}
	if _, err := conn.Write(startup); err != nil {
		return pgAsked{}, fmt.Errorf("sending the startup message to %s: %w", t.ep.addr(), err)
	}
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return pgAsked{}, fmt.Errorf("reading the answer of %s to the startup message: %w", t.ep.addr(), err)
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 || n > maxPGStartupAnswer {
			return pgAsked{}, fmt.Errorf("the answer of %s to the startup message is not PostgreSQL's: message %q of %d bytes", t.ep.addr(), hdr[0], n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(conn, body); err != nil {
			return pgAsked{}, fmt.Errorf("reading the answer of %s to the startup message: %w", t.ep.addr(), err)
		}
		switch hdr[0] {
		case 'v': // NegotiateProtocolVersion comes before the request
			continue
		case 'E':
			var er pgproto3.ErrorResponse
			if err := er.Decode(body); err != nil {
				return pgAsked{}, fmt.Errorf("reading the error %s answered the startup message with: %w", t.ep.addr(), err)
			}
			return pgAsked{}, pgconn.ErrorResponseToPgError(&er)
		case 'R':
			if n < 4 {
				return pgAsked{}, fmt.Errorf("the authentication request of %s is %d bytes long", t.ep.addr(), n)
			}
			a := pgAsked{code: binary.BigEndian.Uint32(body)}
			if a.code == authSASL {
				// The names go into evidence: a few short ones, as a real server sends.
				for _, m := range strings.Split(string(body[4:]), "\x00") {
					if m != "" && len(m) <= 32 && len(a.mechs) < 4 {
						a.mechs = append(a.mechs, m)
					}
				}
			}
			return a, nil
		}
		return pgAsked{}, fmt.Errorf("%s answered the startup message with message %q, not an authentication request", t.ep.addr(), hdr[0])
	}
}

// dialPG connects to the first of the endpoint's addresses that accepts, as pgx does.
func (p *prober) dialPG(ctx context.Context, ep endpoint) (net.Conn, error) {
	addrs := []string{ep.Host}
	if net.ParseIP(ep.Host) == nil {
		var err error
		if addrs, err = p.opts.Resolver.LookupHost(ctx, ep.Host); err != nil {
			return nil, fmt.Errorf("resolving %s: %w", ep.Host, err)
		}
	}
	var last error
	for _, a := range addrs {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(a, ep.Port))
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, fmt.Errorf("connecting to %s: %w", ep.addr(), last)
}

// pgUnverified asks an unverified server which authentication it wants and reports it. It is
// inconclusive, not an error: a real server behind a CA this machine does not trust asks exactly
// this, and what the operator can do is let the next boot verify the server, and then every
// check runs. why is the code of the finding that made the server unverified.
func (p *prober) pgUnverified(ctx context.Context, t pgTarget, d pgDB, mode tlsMode, why findings.Code) findings.Finding {
	a, err := p.pgAsk(ctx, t, d.name, mode)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code != "28000" {
			// Only pg_hba.conf's verdict comes before authentication on a real server; anything
			// else (a password "rejected" that was never sent, a database "missing") is the
			// unverified server's word.
			return findings.New(findings.ProbeInconclusive, t.ep.Target,
				fmt.Sprintf("PostgreSQL at %s (%s) refused the connection before authentication", t.ep.addr(), mode),
				fmt.Sprintf("SQLSTATE %s: %s", pe.Code, pe.Message)).
				WithFix("the server refused before asking for any password: act on the SQLSTATE in the evidence (53300: too many connections; 57P03: starting up or in recovery), and make the server verifiable (its CA in the bucket's ca-certificates/) so the next boot checks it fully")
		}
		f, _ := pgFinding(t, d, mode, err)
		return f
	}
	var how string
	switch a.code {
	case authCleartext:
		how = "the password in clear text (as a TLS-stripping man in the middle does)"
	case authMD5:
		how = "an MD5 password hash (RDS's default password_encryption before PostgreSQL 14)"
	case authOK:
		how = "no password at all (trust)"
	case authSASL:
		how = "SASL authentication"
		for _, m := range a.mechs {
			if m == "SCRAM-SHA-256" {
				how = "SCRAM-SHA-256"
			}
		}
	case authGSS, authSSPI:
		how = "GSSAPI or SSPI authentication"
	default:
		how = fmt.Sprintf("authentication method %d", a.code)
	}
	because := "its certificate could not be verified"
	fix := "put the CA that issued the server's certificate in the bucket's ca-certificates/ prefix as a .crt " +
		"(for RDS, the bundle https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem) so the next boot verifies the server and checks it fully"
	switch why {
	case findings.TLSOff:
		because = "it offers no TLS"
		fix = "enable TLS on the server (ssl = on, with a certificate; RDS always offers it) and put its CA in the bucket's ca-certificates/ prefix as a .crt, so the next boot verifies the server and checks it fully"
	case findings.TLSHostnameMismatch:
		fix = "connect with a name the server's certificate holds (see TLS_HOSTNAME_MISMATCH), or reissue the certificate with " + t.ep.Host + ", so the next boot verifies the server and checks it fully"
	case findings.TLSExpired:
		fix = "renew the server's certificate (and check this machine's clock: timedatectl) so the next boot verifies the server and checks it fully"
	}
	mechs := ""
	if a.code == authSASL {
		mechs = fmt.Sprintf(" (mechanisms %q)", a.mechs)
	}
	return findings.New(findings.ProbeInconclusive, t.ep.Target,
		fmt.Sprintf("PostgreSQL at %s asks for %s for user %q, on a connection whose server haagent cannot trust (%s); haagent does not authenticate there and did not send the password (nor a hash or SCRAM proof of it), so the password, database and extension checks did not run",
			t.ep.addr(), how, t.user, because),
		fmt.Sprintf("AuthenticationRequest code %d%s with %s; haagent hung up without answering", a.code, mechs, mode)).
		WithFix(fix)
}

func quoteKV(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// pgFinding classifies a failed connection. stop says that other databases would fail the
// same way (credentials, pg_hba, network), so the probe does not repeat it five times.
func pgFinding(t pgTarget, d pgDB, mode tlsMode, err error) (findings.Finding, bool) {
	db := d.name
	var pe *pgconn.PgError
	where := t.ep.addr()
	if errors.As(err, &pe) {
		ev := fmt.Sprintf("SQLSTATE %s: %s", pe.Code, pe.Message)
		switch pe.Code {
		case "28P01":
			return findings.New(findings.PGAuthFailed, t.ep.Target,
				fmt.Sprintf("PostgreSQL at %s rejected the password of user %q (from %s)", where, t.user, t.source), ev), true
		case "28000":
			if strings.Contains(pe.Message, "no encryption") && mode == tlsNone {
				return findings.New(findings.TLSRequired, t.ep.Target,
					fmt.Sprintf("pg_hba.conf at %s admits user %q only over TLS, but the server offers no TLS", where, t.user), ev), true
			}
			return findings.New(findings.PGHBARejected, t.ep.Target,
				fmt.Sprintf("pg_hba.conf at %s has no line admitting user %q to database %q from this host (%s)", where, t.user, db, mode), ev).
				WithFix(fmt.Sprintf("add to pg_hba.conf: hostssl %s %s <this host's address>/32 scram-sha-256 (then SELECT pg_reload_conf())", db, t.user)), true
		case "3D000":
			fix := fmt.Sprintf("CREATE DATABASE %s OWNER %s;", pgIdent(db), pgIdent(t.user))
			if len(d.exts) > 0 {
				fix += " then, connected to " + db + " as a superuser:"
				for _, e := range d.exts {
					fix += fmt.Sprintf(" CREATE EXTENSION IF NOT EXISTS %q;", e.name)
				}
			}
			if !d.required {
				return findings.New(findings.PGDatabaseMissing, t.ep.Target,
					fmt.Sprintf("database %q does not exist on %s; it is optional (probes.postgres.optional_databases; by default the databases CircleCI's HA page adds to the runbook's five), so this does not block the install", db, where), ev).
					WithFix(fix).WithSeverity(findings.Warning), false
			}
			return findings.New(findings.PGDatabaseMissing, t.ep.Target,
				fmt.Sprintf("database %q does not exist on %s", db, where), ev).WithFix(fix), false
		case "42501":
			return findings.New(findings.PGConnectDenied, t.ep.Target,
				fmt.Sprintf("user %q may not connect to database %q on %s", t.user, db, where), ev).
				WithFix(fmt.Sprintf("GRANT CONNECT ON DATABASE %s TO %s;", pgIdent(db), pgIdent(t.user))), false
		}
		return findings.New(findings.ProbeInconclusive, t.ep.Target, fmt.Sprintf("PostgreSQL at %s refused the connection", where), ev), true
	}
	if isTimeout(err) {
		return findings.New(findings.ProtocolTimeout, t.ep.Target,
			fmt.Sprintf("%s accepts connections but did not complete a PostgreSQL handshake", where), err.Error()), true
	}
	if notTLS(err) {
		return findings.New(findings.TLSRequired, t.ep.Target, fmt.Sprintf("%s did not speak TLS after agreeing to", where), err.Error()), true
	}
	return findings.New(findings.ProbeInconclusive, t.ep.Target, fmt.Sprintf("connecting to PostgreSQL at %s failed", where), err.Error()), true
}

func pgServerChecks(ctx context.Context, conn *pgx.Conn, t pgTarget) []findings.Finding {
	var out []findings.Finding
	ver := conn.PgConn().ParameterStatus("server_version")
	if n := pgVersionNum(ver); n > 0 && n < minPGVersion {
		out = append(out, findings.New(findings.PGVersionUnsupported, t.ep.Target,
			fmt.Sprintf("PostgreSQL at %s is version %s; CircleCI needs 9.5 or later", t.ep.addr(), ver), "server_version "+ver))
	}
	var recovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recovery); err == nil && recovery {
		out = append(out, findings.New(findings.PGReadOnly, t.ep.Target,
			fmt.Sprintf("PostgreSQL at %s is a read-only standby", t.ep.addr()), "pg_is_in_recovery() = true"))
	}
	return out
}

// pgVersionNum turns "15.18 (Debian 15.18-0+deb12u1)" or "9.4.26" into server_version_num form.
func pgVersionNum(v string) int {
	v, _, _ = strings.Cut(strings.TrimSpace(v), " ")
	parts := strings.Split(v, ".")
	major, err := strconv.Atoi(parts[0])
	if err != nil {
		return 0
	}
	minor := 0
	if len(parts) > 1 {
		digits := parts[1]
		if i := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
			digits = digits[:i]
		}
		minor, _ = strconv.Atoi(digits)
	}
	if major >= 10 {
		return major*10000 + minor
	}
	return major*10000 + minor*100
}

func pgExtensions(ctx context.Context, conn *pgx.Conn, t pgTarget, d pgDB) []findings.Finding {
	if len(d.exts) == 0 {
		return nil
	}
	db := d.name
	rows, err := conn.Query(ctx, "SELECT extname FROM pg_extension")
	if err != nil {
		return []findings.Finding{findings.New(findings.ProbeInconclusive, t.ep.Target, "cannot list the extensions of "+db, err.Error())}
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return []findings.Finding{findings.New(findings.ProbeInconclusive, t.ep.Target, "cannot list the extensions of "+db, err.Error())}
	}
	installed := map[string]bool{}
	for _, h := range have {
		installed[h] = true
	}
	var out []findings.Finding
	for _, e := range d.exts {
		if installed[e.name] {
			continue
		}
		summary := fmt.Sprintf("extension %q is not installed in database %q on %s", e.name, db, t.ep.addr())
		if !e.required {
			summary += "; it is optional (probes.postgres.optional_extensions; by default the ones CircleCI's HA page adds to the runbook's), so this does not block the install"
		}
		f := findings.New(findings.PGExtensionMissing, t.ep.Target, summary, "pg_extension lists: "+strings.Join(have, ", ")).
			WithFix(fmt.Sprintf("as a superuser, connected to %s: CREATE EXTENSION IF NOT EXISTS %q;", db, e.name))
		if !e.required {
			f = f.WithSeverity(findings.Warning)
		}
		out = append(out, f)
	}
	return out
}

func pgIdent(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789_") == "" {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
