;; netprobe: a hand-written hostile component that tries to reach the network through
;; WASI itself (wasi:sockets), not through Vessel's capability-checked host functions.
;;
;; It exports the vessel-module world's guest interface (vessel:host/guest@1.0.0: every
;; export a no-op success, except on-command) and imports wasi:sockets@0.2.0 directly:
;; instance-network, tcp-create-socket, tcp (start-connect, start-bind), udp-create-socket
;; and ip-name-lookup.
;;
;; on-command, whatever its action, reads the decimal digits of its params as a port
;; (params `{"port": 41234}` -> 41234) and then:
;;   1. create-tcp-socket(ipv4)
;;   2. start-connect to 127.0.0.1:<port> (on that socket)
;;   3. start-bind to 127.0.0.1:0 (on a second socket): a guest-owned listening port
;;   4. create-udp-socket(ipv4)
;;   5. resolve-addresses("localhost")
;; and answers ok with JSON naming the outcome of each step: "ok", a wasi:sockets
;; error-code name ("access-denied", ...), or "no-socket" when it needed a socket that
;; could not be created:
;;   {"create":"ok","connect":"ok","bind":"ok","udp":"ok","lookup":"ok"}
;;
;; start-connect is the whole attack: on a host whose WASI allows the address it begins
;; a real non-blocking connect, and the kernel completes the handshake with a listener
;; whether or not the guest ever calls finish-connect.
;;
;; Compiled at test time with wasmtime.wat2wasm (component text is accepted); no .wasm is
;; committed. Built by tests/adversarial/_netprobe.py; used by test_sandbox.py (the
;; attack) and test_durability.py (a module that installs in milliseconds).
(component
  ;; -- wasi:sockets imports (0.2.0: the linker's 0.2.x satisfies them) ------------------
  (import "wasi:sockets/network@0.2.0" (instance $network
    (export "network" (type (sub resource)))
    (type $ec (enum "unknown" "access-denied" "not-supported" "invalid-argument"
      "out-of-memory" "timeout" "concurrency-conflict" "not-in-progress" "would-block"
      "invalid-state" "new-socket-limit" "address-not-bindable" "address-in-use"
      "remote-unreachable" "connection-refused" "connection-reset" "connection-aborted"
      "datagram-too-large" "name-unresolvable" "temporary-resolver-failure"
      "permanent-resolver-failure"))
    (export "error-code" (type $ec-e (eq $ec)))
    (type $fam (enum "ipv4" "ipv6"))
    (export "ip-address-family" (type $fam-e (eq $fam)))
    (type $v4 (tuple u8 u8 u8 u8))
    (export "ipv4-address" (type $v4-e (eq $v4)))
    (type $v6 (tuple u16 u16 u16 u16 u16 u16 u16 u16))
    (export "ipv6-address" (type $v6-e (eq $v6)))
    (type $v4sa (record (field "port" u16) (field "address" $v4-e)))
    (export "ipv4-socket-address" (type $v4sa-e (eq $v4sa)))
    (type $v6sa (record (field "port" u16) (field "flow-info" u32) (field "address" $v6-e)
      (field "scope-id" u32)))
    (export "ipv6-socket-address" (type $v6sa-e (eq $v6sa)))
    (type $sa (variant (case "ipv4" $v4sa-e) (case "ipv6" $v6sa-e)))
    (export "ip-socket-address" (type (eq $sa)))
  ))
  (alias export $network "network" (type $network-res))
  (alias export $network "error-code" (type $error-code))
  (alias export $network "ip-address-family" (type $family))
  (alias export $network "ip-socket-address" (type $socket-address))

  (import "wasi:sockets/instance-network@0.2.0" (instance $instance-network
    (alias outer 1 $network-res (type $n))
    (export "network" (type $n-e (eq $n)))
    (export "instance-network" (func (result (own $n-e))))
  ))

  (import "wasi:sockets/tcp@0.2.0" (instance $tcp
    (alias outer 1 $network-res (type $n))
    (export "network" (type $n-e (eq $n)))
    (alias outer 1 $error-code (type $ec))
    (export "error-code" (type $ec-e (eq $ec)))
    (alias outer 1 $socket-address (type $sa))
    (export "ip-socket-address" (type $sa-e (eq $sa)))
    (export "tcp-socket" (type $sock (sub resource)))
    (export "[method]tcp-socket.start-connect" (func
      (param "self" (borrow $sock)) (param "network" (borrow $n-e))
      (param "remote-address" $sa-e) (result (result (error $ec-e)))))
    (export "[method]tcp-socket.start-bind" (func
      (param "self" (borrow $sock)) (param "network" (borrow $n-e))
      (param "local-address" $sa-e) (result (result (error $ec-e)))))
  ))
  (alias export $tcp "tcp-socket" (type $tcp-socket))

  (import "wasi:sockets/udp@0.2.0" (instance $udp
    (export "udp-socket" (type (sub resource)))
  ))
  (alias export $udp "udp-socket" (type $udp-socket))

  (import "wasi:sockets/tcp-create-socket@0.2.0" (instance $tcp-create-socket
    (alias outer 1 $error-code (type $ec))
    (export "error-code" (type $ec-e (eq $ec)))
    (alias outer 1 $family (type $f))
    (export "ip-address-family" (type $f-e (eq $f)))
    (alias outer 1 $tcp-socket (type $s))
    (export "tcp-socket" (type $s-e (eq $s)))
    (export "create-tcp-socket" (func (param "address-family" $f-e)
      (result (result (own $s-e) (error $ec-e)))))
  ))

  (import "wasi:sockets/udp-create-socket@0.2.0" (instance $udp-create-socket
    (alias outer 1 $error-code (type $ec))
    (export "error-code" (type $ec-e (eq $ec)))
    (alias outer 1 $family (type $f))
    (export "ip-address-family" (type $f-e (eq $f)))
    (alias outer 1 $udp-socket (type $s))
    (export "udp-socket" (type $s-e (eq $s)))
    (export "create-udp-socket" (func (param "address-family" $f-e)
      (result (result (own $s-e) (error $ec-e)))))
  ))

  (import "wasi:sockets/ip-name-lookup@0.2.0" (instance $ip-name-lookup
    (alias outer 1 $network-res (type $n))
    (export "network" (type $n-e (eq $n)))
    (alias outer 1 $error-code (type $ec))
    (export "error-code" (type $ec-e (eq $ec)))
    (export "resolve-address-stream" (type $stream (sub resource)))
    (export "resolve-addresses" (func (param "network" (borrow $n-e)) (param "name" string)
      (result (result (own $stream) (error $ec-e)))))
  ))

  ;; The guest interface's record type, from the vessel contract (wit/vessel-host.wit).
  (import "vessel:host/types@1.0.0" (instance $types
    (type $ev (record (field "module" string) (field "name" string) (field "version" u32)
      (field "data" string) (field "timestamp" u64)))
    (export "event" (type (eq $ev)))
  ))
  (alias export $types "event" (type $event))

  ;; -- linear memory and a bump allocator, in their own module so the lowered imports
  ;; can name the memory before the main module is instantiated -------------------------
  (core module $Memory
    (memory (export "memory") 2)
    (global $heap (mut i32) (i32.const 65536))
    (func (export "realloc") (param $old i32) (param $old-size i32) (param $align i32)
      (param $size i32) (result i32)
      (local $ptr i32)
      ;; align up
      (local.set $ptr (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
      (block $fits
        (br_if $fits (i32.le_u (global.get $heap)
          (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16))
              (i32.const 1))) (i32.const -1))
          (then unreachable)))
      (local.get $ptr))
  )
  (core instance $mem (instantiate $Memory))
  (alias core export $mem "memory" (core memory $memory))
  (alias core export $mem "realloc" (core func $realloc))

  ;; -- lowered imports -------------------------------------------------------------
  (core func $instance-network (canon lower (func $instance-network "instance-network")))
  (core func $create-tcp-socket (canon lower
    (func $tcp-create-socket "create-tcp-socket") (memory $memory)))
  (core func $start-connect (canon lower
    (func $tcp "[method]tcp-socket.start-connect") (memory $memory)))
  (core func $start-bind (canon lower
    (func $tcp "[method]tcp-socket.start-bind") (memory $memory)))
  (core func $resolve-addresses (canon lower
    (func $ip-name-lookup "resolve-addresses") (memory $memory) string-encoding=utf8))
  (core func $create-udp-socket (canon lower
    (func $udp-create-socket "create-udp-socket") (memory $memory)))
  (core func $drop-socket (canon resource.drop $tcp-socket))
  (core func $drop-udp-socket (canon resource.drop $udp-socket))
  (core func $drop-network (canon resource.drop $network-res))

  ;; -- the guest ---------------------------------------------------------------------
  (core module $Guest
    (import "env" "memory" (memory 1))
    (import "wasi" "instance-network" (func $instance-network (result i32)))
    (import "wasi" "create-tcp-socket" (func $create-tcp-socket (param i32 i32)))
    ;; self, network, ip-socket-address (tag + 11 joined case slots), return pointer
    (import "wasi" "start-connect" (func $start-connect
      (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32)))
    (import "wasi" "start-bind" (func $start-bind
      (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32)))
    (import "wasi" "resolve-addresses" (func $resolve-addresses (param i32 i32 i32 i32)))
    (import "wasi" "create-udp-socket" (func $create-udp-socket (param i32 i32)))
    (import "wasi" "drop-socket" (func $drop-socket (param i32)))
    (import "wasi" "drop-udp-socket" (func $drop-udp-socket (param i32)))
    (import "wasi" "drop-network" (func $drop-network (param i32)))

    ;; Memory map (page 0): 16 an ok-unit return area (zeroes); 32 on-command's return
    ;; area; 64/72/80 WASI return areas; 128 the name to resolve; 256 JSON pieces;
    ;; 1024 outcome names (length-prefixed, in error-code order, then ok and no-socket);
    ;; 4096 the answer being built. Page 1 onwards is the allocator's.
    (data (i32.const 128) "localhost")
    (data (i32.const 256) "{\"create\":\"")        ;; 256, 11 bytes
    (data (i32.const 272) "\",\"connect\":\"")     ;; 272, 13 bytes
    (data (i32.const 288) "\",\"bind\":\"")        ;; 288, 10 bytes
    (data (i32.const 304) "\",\"lookup\":\"")      ;; 304, 12 bytes
    (data (i32.const 320) "\"}")                   ;; 320, 2 bytes
    (data (i32.const 336) "\",\"udp\":\"")         ;; 336, 9 bytes
    (data (i32.const 1024)
      "\07unknown" "\0daccess-denied" "\0dnot-supported" "\10invalid-argument"
      "\0dout-of-memory" "\07timeout" "\14concurrency-conflict" "\0fnot-in-progress"
      "\0bwould-block" "\0dinvalid-state" "\10new-socket-limit" "\14address-not-bindable"
      "\0eaddress-in-use" "\12remote-unreachable" "\12connection-refused"
      "\10connection-reset" "\12connection-aborted" "\12datagram-too-large"
      "\11name-unresolvable" "\1atemporary-resolver-failure"
      "\1apermanent-resolver-failure" "\02ok" "\09no-socket")

    (global $out (mut i32) (i32.const 4096))

    (func $emit (param $ptr i32) (param $len i32)
      (memory.copy (global.get $out) (local.get $ptr) (local.get $len))
      (global.set $out (i32.add (global.get $out) (local.get $len))))

    ;; Append the name of outcome $code (an error-code, 21 = ok, 22 = no-socket).
    (func $emit-outcome (param $code i32)
      (local $p i32)
      (local.set $p (i32.const 1024))
      (block $found
        (loop $next
          (br_if $found (i32.eqz (local.get $code)))
          (local.set $p (i32.add (local.get $p)
            (i32.add (i32.load8_u (local.get $p)) (i32.const 1))))
          (local.set $code (i32.sub (local.get $code) (i32.const 1)))
          (br $next)))
      (call $emit (i32.add (local.get $p) (i32.const 1)) (i32.load8_u (local.get $p))))

    ;; The outcome of a result<_, error-code> at $ret.
    (func $unit-outcome (param $ret i32) (result i32)
      (if (result i32) (i32.load8_u (local.get $ret))
        (then (i32.load8_u offset=1 (local.get $ret)))
        (else (i32.const 21))))

    ;; A fresh IPv4 TCP socket handle, or -1 (the error code then at 68).
    (func $socket (result i32)
      (call $create-tcp-socket (i32.const 0) (i32.const 64))
      (if (result i32) (i32.load8_u (i32.const 64))
        (then (i32.const -1))
        (else (i32.load (i32.const 68)))))

    (func $port (param $ptr i32) (param $len i32) (result i32)
      (local $end i32) (local $c i32) (local $port i32)
      (local.set $end (i32.add (local.get $ptr) (local.get $len)))
      (block $done
        (loop $next
          (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
          (local.set $c (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 48)))
          (if (i32.lt_u (local.get $c) (i32.const 10))
            (then (local.set $port (i32.add (i32.mul (local.get $port) (i32.const 10))
              (local.get $c)))))
          (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
          (br $next)))
      (i32.and (local.get $port) (i32.const 0xffff)))

    (func (export "on-command") (param $action i32) (param $action-len i32)
      (param $params i32) (param $params-len i32) (result i32)
      (local $net i32) (local $sock i32) (local $port i32)
      (local.set $port (call $port (local.get $params) (local.get $params-len)))
      (local.set $net (call $instance-network))
      (global.set $out (i32.const 4096))

      ;; 1 + 2: a socket, and a connect to 127.0.0.1:<port>
      (call $emit (i32.const 256) (i32.const 11))
      (local.set $sock (call $socket))
      (if (i32.eq (local.get $sock) (i32.const -1))
        (then
          (call $emit-outcome (i32.load8_u (i32.const 68)))
          (call $emit (i32.const 272) (i32.const 13))
          (call $emit-outcome (i32.const 22)))
        (else
          (call $emit-outcome (i32.const 21))
          (call $emit (i32.const 272) (i32.const 13))
          (call $start-connect (local.get $sock) (local.get $net)
            (i32.const 0) (local.get $port)                    ;; ipv4, port
            (i32.const 127) (i32.const 0) (i32.const 0) (i32.const 1)
            (i32.const 0) (i32.const 0) (i32.const 0)          ;; the 6 slots only
            (i32.const 0) (i32.const 0) (i32.const 0)          ;; ipv6 uses
            (i32.const 72))
          (call $emit-outcome (call $unit-outcome (i32.const 72)))
          (call $drop-socket (local.get $sock))))

      ;; 3: bind a port of our own on 127.0.0.1
      (call $emit (i32.const 288) (i32.const 10))
      (local.set $sock (call $socket))
      (if (i32.eq (local.get $sock) (i32.const -1))
        (then (call $emit-outcome (i32.const 22)))
        (else
          (call $start-bind (local.get $sock) (local.get $net)
            (i32.const 0) (i32.const 0)                        ;; ipv4, port 0
            (i32.const 127) (i32.const 0) (i32.const 0) (i32.const 1)
            (i32.const 0) (i32.const 0) (i32.const 0)
            (i32.const 0) (i32.const 0) (i32.const 0)
            (i32.const 72))
          (call $emit-outcome (call $unit-outcome (i32.const 72)))
          (call $drop-socket (local.get $sock))))

      ;; 4: a UDP socket
      (call $emit (i32.const 336) (i32.const 9))
      (call $create-udp-socket (i32.const 0) (i32.const 64))
      (if (i32.load8_u (i32.const 64))
        (then (call $emit-outcome (i32.load8_u (i32.const 68))))
        (else
          (call $emit-outcome (i32.const 21))
          (call $drop-udp-socket (i32.load (i32.const 68)))))

      ;; 5: name lookup (a stream handle on success is left to the instance's end)
      (call $emit (i32.const 304) (i32.const 12))
      (call $resolve-addresses (local.get $net) (i32.const 128) (i32.const 9) (i32.const 80))
      (call $emit-outcome (if (result i32) (i32.load8_u (i32.const 80))
        (then (i32.load8_u (i32.const 84)))
        (else (i32.const 21))))
      (call $emit (i32.const 320) (i32.const 2))
      (call $drop-network (local.get $net))

      ;; ok(answer)
      (i32.store8 (i32.const 32) (i32.const 0))
      (i32.store (i32.const 36) (i32.const 4096))
      (i32.store (i32.const 40) (i32.sub (global.get $out) (i32.const 4096)))
      (i32.const 32))

    ;; Every other export succeeds at once: ok(()) lives at 16 (zeroes).
    (func (export "on-load") (result i32) (i32.const 16))
    (func (export "on-unload") (result i32) (i32.const 16))
    (func (export "on-event")
      (param i32 i32 i32 i32 i32 i32 i32 i64) (result i32) (i32.const 16))
    (func (export "on-timer") (param i32) (result i32) (i32.const 16))
    (func (export "on-websocket-message") (param i32 i32 i32) (result i32) (i32.const 16))
  )
  (core instance $guest (instantiate $Guest
    (with "env" (instance (export "memory" (memory $memory))))
    (with "wasi" (instance
      (export "instance-network" (func $instance-network))
      (export "create-tcp-socket" (func $create-tcp-socket))
      (export "start-connect" (func $start-connect))
      (export "start-bind" (func $start-bind))
      (export "resolve-addresses" (func $resolve-addresses))
      (export "create-udp-socket" (func $create-udp-socket))
      (export "drop-socket" (func $drop-socket))
      (export "drop-udp-socket" (func $drop-udp-socket))
      (export "drop-network" (func $drop-network))))
  ))

  ;; -- lifted exports: vessel:host/guest@1.0.0 -------------------------------------------
  (func $on-load (result (result (error string)))
    (canon lift (core func $guest "on-load") (memory $memory) (realloc $realloc)))
  (func $on-unload (result (result (error string)))
    (canon lift (core func $guest "on-unload") (memory $memory) (realloc $realloc)))
  (func $on-event (param "event" $event) (result (result (error string)))
    (canon lift (core func $guest "on-event") (memory $memory) (realloc $realloc)))
  (func $on-command (param "action" string) (param "params" string)
    (result (result string (error string)))
    (canon lift (core func $guest "on-command") (memory $memory) (realloc $realloc)))
  (func $on-timer (param "handle" u32) (result (result (error string)))
    (canon lift (core func $guest "on-timer") (memory $memory) (realloc $realloc)))
  (func $on-websocket-message (param "handle" u32) (param "message" string)
    (result (result (error string)))
    (canon lift (core func $guest "on-websocket-message") (memory $memory)
      (realloc $realloc)))
  (instance $guest-interface
    (export "on-load" (func $on-load))
    (export "on-unload" (func $on-unload))
    (export "on-event" (func $on-event))
    (export "on-command" (func $on-command))
    (export "on-timer" (func $on-timer))
    (export "on-websocket-message" (func $on-websocket-message))
  )
  (export "vessel:host/guest@1.0.0" (instance $guest-interface))
)
