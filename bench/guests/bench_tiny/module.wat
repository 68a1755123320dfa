;; bench-tiny: the smallest component of the vessel-module world, hand-written.
;;
;; It exports the guest interface (vessel:host/guest@1.0.0): on-command answers ok with
;; its params, whatever the action (an echo); every other export succeeds at once. It
;; imports nothing but the event type. A componentize-py guest takes Cranelift seconds
;; to compile; this one takes milliseconds, so `python -m bench --quick` runs the steps
;; that compile (first_start, compile_memory, install_memory) through every code path
;; without minutes of compiling. Its numbers mean nothing; the full run uses Python
;; guests. The allocator never frees: each call keeps its strings (fine for a few calls).
;;
;; Built by bench/_setup.py with wasmtime.wat2wasm (component text is accepted); no
;; .wasm is committed.
(component
  ;; The guest interface's record type, from the vessel contract (wit/vessel-host.wit).
  (import "vessel:host/types@1.0.0" (instance $types
    (type $ev (record (field "module" string) (field "name" string) (field "version" u32)
      (field "data" string) (field "timestamp" u64)))
    (export "event" (type (eq $ev)))
  ))
  (alias export $types "event" (type $event))

  ;; -- linear memory and a bump allocator ----------------------------------------------
  (core module $Memory
    (memory (export "memory") 2)
    (global $heap (mut i32) (i32.const 65536))
    (func (export "realloc") (param $old i32) (param $old-size i32) (param $align i32)
      (param $size i32) (result i32)
      (local $ptr i32)
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

  ;; -- the guest ---------------------------------------------------------------------
  (core module $Guest
    (import "env" "memory" (memory 1))
    ;; Page 0: 16 an ok-unit return area (zeroes); 32 on-command's return area.
    (func (export "on-command") (param $action i32) (param $action-len i32)
      (param $params i32) (param $params-len i32) (result i32)
      ;; ok(params): the string the host passed in, answered as it is
      (i32.store8 (i32.const 32) (i32.const 0))
      (i32.store (i32.const 36) (local.get $params))
      (i32.store (i32.const 40) (local.get $params-len))
      (i32.const 32))
    (func (export "on-load") (result i32) (i32.const 16))
    (func (export "on-unload") (result i32) (i32.const 16))
    (func (export "on-event")
      (param i32 i32 i32 i32 i32 i32 i32 i64) (result i32) (i32.const 16))
    (func (export "on-timer") (param i32) (result i32) (i32.const 16))
    (func (export "on-websocket-message") (param i32 i32 i32) (result i32) (i32.const 16))
  )
  (core instance $guest (instantiate $Guest
    (with "env" (instance (export "memory" (memory $memory))))
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
