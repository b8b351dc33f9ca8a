"""mixnode"""
