"""Bandwidth limits with weekly windows: their rates over time, their store, and the governor that sends every
connected appliance the rates in force."""
