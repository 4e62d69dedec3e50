package probes

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"syscall"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	"go.mongodb.org/mongo-driver/x/mongo/driver"
	"go.mongodb.org/mongo-driver/x/mongo/driver/connstring"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/settings"
	"github.com/haagent/haagent/internal/wire"
)

// MongoVariables are the URIs the services read.
var MongoVariables = []string{
	"CIRCLE_SECRETS_MONGODB_MAIN_URI", "CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI", "CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI",
	"CIRCLE_SECRETS_MONGODB_CONTAINERS_URI", "CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI",
}

// readWrite is what the services need on each database their URIs name.
var readWrite = []string{"find", "insert", "update", "remove"}

// mongoGroup is one endpoint (hosts, user, auth source, replica set, TLS) and every database
// the URIs sharing it name: identical endpoints are connected once.
type mongoGroup struct {
	cs     *connstring.ConnString
	vars   []string
	varDBs []string
	dbs    []string
	target string
}

func (g *mongoGroup) authSource() string {
	if g.cs.AuthSourceSet {
		return g.cs.AuthSource
	}
	if g.cs.Database != "" {
		return g.cs.Database
	}
	return "admin"
}

func probeMongo(ctx context.Context, p *prober, s *settings.Settings) *result {
	res := &result{}
	groups := map[string]*mongoGroup{}
	var order []string
	for _, name := range MongoVariables {
		v, fs := s.Require("mongo", name)
		if len(fs) > 0 {
			res.addAll(fs)
			continue
		}
		cs, err := connstring.Parse(v.Value)
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, v.Value) || (cs != nil && cs.Password != "" && strings.Contains(msg, cs.Password)) {
				msg = "the URI does not parse"
			}
			res.add(findings.New("URI_MALFORMED", v.Where(), fmt.Sprintf("%s is not a valid MongoDB URI: %s", name, msg), findings.Redact(v.Value)))
			continue
		}
		key := strings.Join(cs.Hosts, ",") + "\x00" + cs.Username + "\x00" + cs.Password + "\x00" + cs.AuthSource + "\x00" + cs.ReplicaSet + fmt.Sprint(cs.SSL)
		g, ok := groups[key]
		if !ok {
			user := ""
			if cs.Username != "" {
				user = cs.Username + "@"
			}
			g = &mongoGroup{cs: cs, target: user + strings.Join(cs.Hosts, ",")}
			if cs.ReplicaSet != "" {
				g.target += "?replicaSet=" + cs.ReplicaSet
			}
			groups[key] = g
			order = append(order, key)
		}
		g.vars = append(g.vars, name)
		g.varDBs = append(g.varDBs, cs.Database)
		if cs.Database != "" && !contains(g.dbs, cs.Database) {
			g.dbs = append(g.dbs, cs.Database)
		}
	}
	for _, k := range order {
		// Another service's settings may lead to the same endpoint and databases: probed once
		// (probes.go).
		g := groups[k]
		p.once(ctx, "mongo", k+"\x00"+strings.Join(g.vars, ",")+"\x00"+strings.Join(g.varDBs, ","), res, func(r *result) { p.mongoGroup(ctx, g, r) })
	}
	return res
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func splitHostPort(h string) endpoint {
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		host, port = h, "27017"
	}
	return endpoint{Host: host, Port: port, Target: h}
}

func (p *prober) mongoGroup(ctx context.Context, g *mongoGroup, res *result) {
	useTLS := g.cs.SSL
	verify := !g.cs.SSLInsecure
	var im wire.IsMaster
	var seed string
	for _, h := range g.cs.Hosts {
		ep := splitHostPort(h)
		ep.Target = g.target
		if f := p.reach(ctx, ep); f != nil {
			f.Summary += fmt.Sprintf(" (seed %s of %s)", h, strings.Join(g.vars, ", "))
			res.add(*f)
			continue
		}
		m, err := p.isMaster(ctx, h, useTLS, verify)
		if err != nil && verify {
			if f := tlsFinding(ep, err); f != nil {
				res.add(*f)
				verify = false
				m, err = p.isMaster(ctx, h, useTLS, verify)
			}
		}
		if err != nil {
			res.add(mongoConnFinding(g, h, useTLS, err))
			continue
		}
		im, seed = m, h
		break
	}
	if seed == "" {
		res.check(Checked{Service: "mongo", Target: g.target})
		return
	}
	ok := true
	detail := fmt.Sprintf("MongoDB %s", wire.Version(im.MaxWireVersion))
	if useTLS {
		detail += map[bool]string{true: ", TLS verified", false: ", TLS, certificate not verified"}[verify]
	}
	add := func(f findings.Finding) {
		if f.Severity == findings.Error {
			ok = false
		}
		res.add(f)
	}

	// Replica set: the name, a primary, and every advertised member reachable from here.
	if g.cs.ReplicaSet != "" && im.SetName != g.cs.ReplicaSet {
		got := fmt.Sprintf("%q", im.SetName)
		if im.SetName == "" {
			got = "no replica set (a standalone server)"
		}
		add(findings.New("MONGO_REPLSET_MISMATCH", g.target,
			fmt.Sprintf("the URI asks for replica set %q; %s answers %s", g.cs.ReplicaSet, seed, got), "isMaster.setName").
			WithFix(fmt.Sprintf("set replicaSet=%s in the URIs (%s), or connect to the intended set", im.SetName, strings.Join(g.vars, ", "))))
	}
	if im.SetName != "" {
		states := map[string]string{}
		for _, m := range im.Members() {
			ep := splitHostPort(m)
			ep.Target = m
			if f := p.reach(ctx, ep); f != nil {
				states[m] = "unreachable: " + f.Summary
				add(findings.New("MONGO_MEMBER_UNREACHABLE", m,
					fmt.Sprintf("replica set %s advertises member %s, which this machine cannot reach (%s)", im.SetName, m, f.Code), f.Evidence).
					WithFix("the driver connects to the names the members advertise, not the URI's: make " + m + " resolve and reach from here, or rename the member (MongoDB manual, \"Change Hostnames in a Replica Set\": rs.conf(), edit members[n].host, rs.reconfig(cfg)); an AWS-internal name a primary adopted at rs.initiate() is the usual cause"))
				continue
			}
			if mm, err := p.isMaster(ctx, m, useTLS, verify); err == nil {
				states[m] = mm.State()
			} else {
				states[m] = "no answer: " + err.Error()
			}
		}
		if im.Primary == "" && !im.IsMaster {
			var parts []string
			for _, m := range im.Members() {
				parts = append(parts, m+": "+states[m])
			}
			sort.Strings(parts)
			add(findings.New("MONGO_NO_PRIMARY", g.target, fmt.Sprintf("replica set %s has no primary: writes fail until one is elected", im.SetName),
				strings.Join(parts, "; ")).
				WithFix("check the members' logs and rs.status() on a member: a majority must be up and reach each other to elect a primary"))
		}
	}

	if im.MaxWireVersion < wire.DriverMinWire {
		res.add(findings.New("MONGO_VERSION_LIMITED", g.target,
			fmt.Sprintf("%s runs MongoDB %s (wire version %d); the authentication and privilege checks need 3.6 or later and did not run", seed, wire.Version(im.MaxWireVersion), im.MaxWireVersion),
			"isMaster.maxWireVersion").WithFix("nothing to do if the services already work with this server; haagent checked connectivity, TLS and the replica set"))
		res.check(Checked{Service: "mongo", Target: g.target, OK: ok, Detail: detail})
		return
	}
	for _, f := range p.mongoAuthAndPrivileges(ctx, g, seed, useTLS, verify) {
		add(f)
	}
	res.check(Checked{Service: "mongo", Target: g.target, OK: ok, Detail: detail})
}

// isMaster opens a raw connection (TLS as the URI says) and asks isMaster over OP_QUERY.
func (p *prober) isMaster(ctx context.Context, hostport string, useTLS, verify bool) (wire.IsMaster, error) {
	ep := splitHostPort(hostport)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ep.Host, ep.Port))
	if err != nil {
		return wire.IsMaster{}, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl.Add(-100 * time.Millisecond))
	}
	if useTLS {
		tc := tls.Client(conn, &tls.Config{ServerName: ep.Host, RootCAs: p.opts.RootCAs, InsecureSkipVerify: !verify, MinVersion: tls.VersionTLS12}) //nolint:gosec // only after the verified attempt failed and was reported
		if err := tc.HandshakeContext(ctx); err != nil {
			return wire.IsMaster{}, &tlsHandshakeError{err}
		}
		conn = tc
	}
	return wire.LegacyIsMaster(conn)
}

type tlsHandshakeError struct{ err error }

func (e *tlsHandshakeError) Error() string { return "TLS handshake: " + e.err.Error() }
func (e *tlsHandshakeError) Unwrap() error { return e.err }

func mongoConnFinding(g *mongoGroup, host string, useTLS bool, err error) findings.Finding {
	var hs *tlsHandshakeError
	switch {
	case isTimeout(err):
		return findings.New("PROTOCOL_TIMEOUT", g.target, fmt.Sprintf("%s accepts connections but did not answer isMaster", host), err.Error())
	case useTLS && errors.As(err, &hs):
		return findings.New("TLS_REQUIRED", g.target, fmt.Sprintf("the URI says ssl=true but %s does not complete a TLS handshake (it may not use TLS)", host), err.Error()).
			WithFix("remove ssl=true from the URIs if the server has no TLS, or enable TLS on the server (net.ssl.mode: requireSSL)")
	case !useTLS && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "not a MongoDB message")):
		return findings.New("TLS_REQUIRED", g.target, fmt.Sprintf("%s closed the connection on a plain isMaster: it likely requires TLS, and the URI lacks ssl=true", host), err.Error()).
			WithFix("add ssl=true (or tls=true) to the URIs: " + strings.Join(g.vars, ", "))
	}
	return findings.New("PROBE_INCONCLUSIVE", g.target, fmt.Sprintf("isMaster on %s failed", host), err.Error())
}

// mongoAuthAndPrivileges authenticates as the services do and reads the user's effective
// privileges (connectionStatus with showPrivileges, so root, readWriteAnyDatabase and custom
// roles count), not its role names.
func (p *prober) mongoAuthAndPrivileges(ctx context.Context, g *mongoGroup, seed string, useTLS, verify bool) []findings.Finding {
	status, err := p.connectionStatus(ctx, g, seed, g.authSource(), useTLS, verify)
	if err != nil {
		if mongoCode(err) == 18 {
			f := findings.New("MONGO_AUTH_FAILED", g.target,
				fmt.Sprintf("MongoDB at %s rejected user %q authenticating against database %q", seed, g.cs.Username, g.authSource()), "AuthenticationFailed (code 18)").
				WithFix("check the user name and password in " + strings.Join(g.vars, ", ") + "; percent-encode special characters in the password")
			if g.authSource() != "admin" {
				if _, err2 := p.connectionStatus(ctx, g, seed, "admin", useTLS, verify); err2 == nil {
					f = f.WithFix(fmt.Sprintf("the user exists in the admin database: add authSource=admin to the URIs (%s)", strings.Join(g.vars, ", ")))
					f.Summary += "; the same credentials work with authSource=admin"
				}
			}
			return []findings.Finding{f}
		}
		if isTimeout(err) {
			return []findings.Finding{findings.New("PROTOCOL_TIMEOUT", g.target, "MongoDB did not complete authentication in time", err.Error())}
		}
		return []findings.Finding{findings.New("PROBE_INCONCLUSIVE", g.target, "connectionStatus failed", err.Error())}
	}
	var cs struct {
		AuthInfo struct {
			Users []struct {
				User string `bson:"user"`
				DB   string `bson:"db"`
			} `bson:"authenticatedUsers"`
			Privileges *[]struct {
				Resource struct {
					DB          *string `bson:"db"`
					Collection  *string `bson:"collection"`
					AnyResource bool    `bson:"anyResource"`
				} `bson:"resource"`
				Actions []string `bson:"actions"`
			} `bson:"authenticatedUserPrivileges"`
		} `bson:"authInfo"`
	}
	if err := bson.Unmarshal(status, &cs); err != nil {
		return []findings.Finding{findings.New("PROBE_INCONCLUSIVE", g.target, "cannot read the connectionStatus answer", err.Error())}
	}
	user, userDB := g.cs.Username, g.authSource()
	if user == "" && len(cs.AuthInfo.Users) > 0 {
		// A URI without credentials on a server that authenticates otherwise (x509).
		user, userDB = cs.AuthInfo.Users[0].User, cs.AuthInfo.Users[0].DB
	}
	if user == "" {
		return nil // no authentication: nothing to check privileges for
	}
	if cs.AuthInfo.Privileges == nil {
		return []findings.Finding{findings.New("PROBE_INCONCLUSIVE", g.target, fmt.Sprintf("the server did not report the privileges of user %q (connectionStatus showPrivileges)", user), "authInfo.authenticatedUserPrivileges is absent").
			WithFix(fmt.Sprintf("check by hand that %q has readWrite on %s: db.runCommand({connectionStatus: 1, showPrivileges: true}); FerretDB and some managed services do not report privileges", user, strings.Join(g.dbs, ", ")))}
	}
	var out []findings.Finding
	for _, db := range g.dbs {
		have := map[string]bool{}
		for _, pr := range *cs.AuthInfo.Privileges {
			r := pr.Resource
			matches := r.AnyResource ||
				(r.DB != nil && (*r.DB == db || *r.DB == "") && r.Collection != nil && *r.Collection == "")
			if matches {
				for _, a := range pr.Actions {
					have[a] = true
				}
			}
		}
		var missing []string
		for _, a := range readWrite {
			if !have[a] {
				missing = append(missing, a)
			}
		}
		if len(missing) > 0 {
			out = append(out, findings.New("MONGO_PRIVILEGE_MISSING", g.target,
				fmt.Sprintf("user %q cannot %s in database %q, which %s names", user, strings.Join(missing, "/"), db, varsNaming(g, db)),
				"connectionStatus authenticatedUserPrivileges").
				WithFix(fmt.Sprintf(`db.getSiblingDB(%q).grantRolesToUser(%q, [{role: "readWrite", db: %q}])`, userDB, user, db)))
		}
	}
	return out
}

func (p *prober) connectionStatus(ctx context.Context, g *mongoGroup, seed, authSource string, useTLS, verify bool) (bson.Raw, error) {
	o := options.Client().SetHosts([]string{seed}).SetDirect(true).SetAppName("haagent-probe")
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl) - 100*time.Millisecond
		o.SetServerSelectionTimeout(left).SetConnectTimeout(left)
	}
	if useTLS {
		o.SetTLSConfig(&tls.Config{RootCAs: p.opts.RootCAs, InsecureSkipVerify: !verify, MinVersion: tls.VersionTLS12}) //nolint:gosec // see isMaster
	}
	if g.cs.Username != "" {
		o.SetAuth(options.Credential{Username: g.cs.Username, Password: g.cs.Password, PasswordSet: g.cs.PasswordSet,
			AuthSource: authSource, AuthMechanism: g.cs.AuthMechanism})
	}
	c, err := mongo.Connect(ctx, o)
	if err != nil {
		return nil, err
	}
	defer c.Disconnect(context.Background())
	return c.Database(authSource).RunCommand(ctx, bson.D{{Key: "connectionStatus", Value: 1}, {Key: "showPrivileges", Value: true}}).Raw()
}

func mongoCode(err error) int32 {
	var de driver.Error
	if errors.As(err, &de) {
		return de.Code
	}
	var ce mongo.CommandError
	if errors.As(err, &ce) {
		return ce.Code
	}
	if strings.Contains(err.Error(), "AuthenticationFailed") || strings.Contains(err.Error(), "Authentication failed") {
		return 18
	}
	return 0
}

// varsNaming lists the variables whose URI names db.
func varsNaming(g *mongoGroup, db string) string {
	var out []string
	for i, v := range g.vars {
		if i < len(g.varDBs) && g.varDBs[i] == db {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return strings.Join(g.vars, ", ")
	}
	return strings.Join(out, ", ")
}
