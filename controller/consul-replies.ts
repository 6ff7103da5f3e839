// The Consul replies the controller reads, typed: data only (only the fields
// the controller reads). The pure core imports this module, never the client.

export interface UpstreamRegistration {
  DestinationType?: "service" | "prepared_query" | "";
  DestinationName: string;
  DestinationNamespace?: string;
  DestinationPartition?: string;
  Datacenter?: string;
  LocalBindAddress?: string;
  LocalBindPort?: number;
  Config?: Record<string, unknown>;
}

export interface ProxyRegistration {
  DestinationServiceName: string;
  DestinationServiceID?: string;
  LocalServiceAddress?: string;
  LocalServicePort?: number;
  Config?: Record<string, unknown> | null;
  Upstreams?: UpstreamRegistration[] | null;
}

export interface AgentServiceRegistration {
  ID: string;
  Service: string;
  Kind?: string;
  Address: string;
  Port: number;
  Proxy?: ProxyRegistration;
  Datacenter?: string;
  Namespace?: string;
  Partition?: string;
  ContentHash?: string;
}

export interface CaRoot {
  ID: string;
  Name?: string;
  RootCert: string;
  IntermediateCerts?: string[] | null;
  Active: boolean;
}

export interface CaRoots {
  ActiveRootID: string;
  TrustDomain: string;
  Roots: CaRoot[] | null;
}

export interface LeafCertificate {
  SerialNumber: string;
  CertPEM: string;
  PrivateKeyPEM: string;
  Service: string;
  ServiceURI: string;
  ValidAfter: string;
  ValidBefore: string;
  ModifyIndex?: number;
}

export interface ServiceInstanceEntry {
  Node: { Node: string; Address: string; Datacenter?: string };
  Service: { ID: string; Service: string; Address: string; Port: number; Kind?: string };
  Checks?: { Status: string; CheckID: string }[];
}

export interface PreparedQueryResult {
  Service: string;
  Nodes: ServiceInstanceEntry[] | null;
  Datacenter: string;
}

/** The intentions matching a destination, and the index they were read at. */
export interface IntentionsAtIndex {
  byDestination: Record<string, Intention[] | null>;
  /** X-Consul-Index of the reply: the authorizer is asked to have seen at least this one. */
  index: number;
}

export interface Intention {
  ID?: string;
  SourceName: string;
  SourceNS?: string;
  SourcePartition?: string;
  SourcePeer?: string;
  SourceSamenessGroup?: string;
  SourceType?: string;
  DestinationName: string;
  Action?: "allow" | "deny";
  Permissions?: unknown[] | null;
  JWT?: unknown;
  Precedence?: number;
  ModifyIndex?: number;
}

/** One reply of an endpoint, with what a blocking query needs to continue. */
export interface ConsulPage<T> {
  value: T;
  /** X-Consul-Index, when the endpoint is index-blocking. */
  index?: number;
  /** X-Consul-ContentHash, when the endpoint is hash-blocking. */
  contentHash?: string;
}

/** Where a blocking query resumes: an index or a content hash, and how long to wait. */
export interface BlockingCursor {
  index?: number;
  hash?: string;
  waitSeconds?: number;
}

// ---- The compiled discovery chain (/v1/discovery-chain/<service>) ----
// Shapes checked against a real 1.22.3 agent (test/fixtures/consul/chain-*.json).
// Durations are Go duration strings ("1.5s"), except a resolver node's
// RequestTimeout, which Consul encodes as nanoseconds.

export interface DiscoveryChainReply {
  Chain: CompiledDiscoveryChain;
}

export interface CompiledDiscoveryChain {
  ServiceName: string;
  Namespace?: string;
  Partition?: string;
  Datacenter: string;
  /** tcp, http, http2 or grpc (Consul refuses a chain whose entries disagree). */
  Protocol: string;
  /** True when no config entry shaped the chain (a single default resolver). */
  Default?: boolean;
  CustomizationHash?: string;
  StartNode: string;
  Nodes: Record<string, DiscoveryGraphNode>;
  Targets: Record<string, DiscoveryTarget>;
}

export type DiscoveryGraphNode = DiscoveryRouterNode | DiscoverySplitterNode | DiscoveryResolverNode;

export interface DiscoveryRouterNode {
  Type: "router";
  Name: string;
  Routes: DiscoveryRoute[];
}

export interface DiscoverySplitterNode {
  Type: "splitter";
  Name: string;
  Splits: DiscoverySplit[];
  LoadBalancer?: DiscoveryLoadBalancer;
}

export interface DiscoveryResolverNode {
  Type: "resolver";
  Name: string;
  Resolver: DiscoveryResolver;
  LoadBalancer?: DiscoveryLoadBalancer;
}

export interface DiscoveryRoute {
  Definition: { Match?: { HTTP?: RouteHttpMatch }; Destination?: RouteDestination };
  NextNode: string;
}

export interface RouteHttpMatch {
  PathExact?: string;
  PathPrefix?: string;
  PathRegex?: string;
  CaseInsensitive?: boolean;
  Header?: RouteHeaderMatch[];
  QueryParam?: RouteQueryMatch[];
  Methods?: string[];
}

export interface RouteHeaderMatch {
  Name: string;
  Present?: boolean;
  Exact?: string;
  Prefix?: string;
  Suffix?: string;
  Regex?: string;
  Invert?: boolean;
}

export interface RouteQueryMatch {
  Name: string;
  Present?: boolean;
  Exact?: string;
  Regex?: string;
}

export interface HeaderModifiers {
  Add?: Record<string, string>;
  Set?: Record<string, string>;
  Remove?: string[];
}

export interface RouteDestination {
  Service?: string;
  ServiceSubset?: string;
  Namespace?: string;
  Partition?: string;
  PrefixRewrite?: string;
  RequestTimeout?: string;
  IdleTimeout?: string;
  NumRetries?: number;
  RetryOnConnectFailure?: boolean;
  RetryOnStatusCodes?: number[];
  RetryOn?: string[];
  RequestHeaders?: HeaderModifiers;
  ResponseHeaders?: HeaderModifiers;
}

export interface DiscoverySplit {
  /** The compiled weight (percent, 0.01 precision): the one to use. Absent when 0 (Consul 1.22.3 omits it). */
  Weight?: number;
  Definition?: { Weight?: number; Service?: string; ServiceSubset?: string; RequestHeaders?: HeaderModifiers; ResponseHeaders?: HeaderModifiers };
  NextNode: string;
}

export interface DiscoveryResolver {
  /** Go duration string. */
  ConnectTimeout?: string;
  /** Nanoseconds (or a Go duration string; both are read). */
  RequestTimeout?: number | string;
  Default?: boolean;
  Target: string;
  Failover?: DiscoveryFailover;
}

export interface DiscoveryFailover {
  Targets?: string[];
  Policy?: { Mode?: string; Regions?: string[] };
  Regions?: string[];
}

export interface DiscoveryLoadBalancer {
  Policy?: string;
  RingHashConfig?: { MinimumRingSize?: number; MaximumRingSize?: number };
  LeastRequestConfig?: { ChoiceCount?: number };
  HashPolicies?: DiscoveryHashPolicy[];
}

export interface DiscoveryHashPolicy {
  Field?: "header" | "cookie" | "query_parameter" | string;
  FieldValue?: string;
  CookieConfig?: { Session?: boolean; TTL?: string; Path?: string };
  SourceIP?: boolean;
  Terminal?: boolean;
}

export interface DiscoveryTarget {
  ID: string;
  Service: string;
  ServiceSubset?: string;
  Namespace?: string;
  Partition?: string;
  Datacenter: string;
  Peer?: string;
  ConnectTimeout?: string;
  Subset?: { Filter?: string; OnlyPassing?: boolean };
  MeshGateway?: { Mode?: string };
  SNI?: string;
  Name?: string;
  Locality?: unknown;
}

/** The overrides an upstream's own Config puts on its chain (POST body). */
export interface DiscoveryChainOverrides {
  OverrideConnectTimeout?: string;
  OverrideProtocol?: string;
}

/** proxy-defaults `AccessLogs` (Consul's structs.AccessLogsConfig). */
export interface AccessLogsConfig {
  Enabled?: boolean;
  DisableListenerLogs?: boolean;
  /** "" or "stdout", "stderr", "file". */
  Type?: string;
  Path?: string;
  JSONFormat?: string;
  TextFormat?: string;
}

/** The `proxy-defaults` config entry named `global` (only the fields read here). */
export interface ProxyDefaultsEntry {
  Kind: "proxy-defaults";
  Name: string;
  AccessLogs?: AccessLogsConfig | null;
  ModifyIndex?: number;
}

/** `TLS.Incoming` / `TLS.Outgoing` of the mesh entry (Consul's MeshDirectionalTLSConfig). */
export interface MeshDirectionalTls {
  TLSMinVersion?: string;
  TLSMaxVersion?: string;
  CipherSuites?: string[] | null;
  [other: string]: unknown;
}

/** The `mesh` config entry (only the fields read here). */
export interface MeshEntry {
  Kind: "mesh";
  /** Absent: the one mesh entry is implicitly named "mesh". */
  Name?: string;
  TLS?: { Incoming?: MeshDirectionalTls | null; Outgoing?: MeshDirectionalTls | null } | null;
  ModifyIndex?: number;
}
